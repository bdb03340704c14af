from mvcli.callbacks.prediction_writer import SubmissionWriter

__all__ = ["SubmissionWriter"]
