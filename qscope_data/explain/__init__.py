"""Feature dashboards and scored explanations (`qscope features explain`); `run.py` is the stage."""
