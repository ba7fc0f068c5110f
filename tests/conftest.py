"""Test set-up: real PostgreSQL, Redis and HTTP servers, isolated per run.

Each run gets its own database (``atlas_test_<run id>``) and its own Redis key
prefixes, so runs never collide. rq reads RQ_KEY_PREFIX when it is first
imported, hence the environment is set here before any plugin imports rq.
"""

import os
import uuid

RUN_ID = uuid.uuid4().hex[:10]
os.environ["RQ_KEY_PREFIX"] = f"rqtest{RUN_ID}"
os.environ["ATLAS_TEST_RUN_ID"] = RUN_ID

pytest_plugins = ["tests.fix_services", "tests.fix_processes", "tests.fix_dashboard", "tests.fix_v2"]
