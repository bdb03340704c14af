"""mvcli: a LightningCLI application for multi-task, multi-view video classification."""

__version__ = "0.1.0"
