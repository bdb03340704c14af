from mvcli.cli import run

run()
