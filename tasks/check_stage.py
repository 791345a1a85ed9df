"""The names of the tasks a flow runs before anything is written: its check stage.

Light on purpose (no imports): flows.console tells from a log record's task name whether a run
is past its checks, and it is set up before the pipeline's modules (torch, MLflow) load.
"""

FETCH_DATA = "fetch-data"  # brings the data into the working tree for the checks to read
FETCH_BASE_MODEL = "fetch-base-model"  # an s3:// base into its local cache, for the checks
CHECK_INPUTS = "check-inputs"
CHECK_SERVICES = "check-services"
CHECK_MODEL_VERSION = "check-model-version"
CHECK_PROMOTION = "check-promotion"

CHECK_TASKS = frozenset(
    (
        FETCH_DATA,
        FETCH_BASE_MODEL,
        CHECK_INPUTS,
        CHECK_SERVICES,
        CHECK_MODEL_VERSION,
        CHECK_PROMOTION,
    )
)
