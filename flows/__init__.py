"""Prefect 3 flows for qscope-data (import name `qscope_flows`): one flow per stage (`stages.py`) and the
`curation_pipeline` composing them (`pipeline.py`). Flows only compose `qscope_data.stages`; retries, caching,
the GPU concurrency limit and the markdown artifacts are theirs, the work is the stage libraries'.

Settings applied before Prefect is imported (each only if the environment has not set it):
- server analytics off: in ephemeral mode its heartbeat logs a long SQL traceback;
- a generous ephemeral-server start-up timeout: on a busy small machine the 20 s default is not enough.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
