"""Airflow DAG sawmill_batch_etl: runs the batch_etl jobs of stacks/platform every day.

Delivered to Airflow by the release: stacks/platform/compose.yaml carries this file as the inline Swarm config
airflow_dag_batch_etl, mounted at /opt/airflow/dags/sawmill_batch_etl.py in the scheduler and the webserver
(cmd/agent/platform_test.go checks that the two copies are the same). Each task asks the batch_etl service to
run one job (POST http://batch_etl:8080/jobs/<job>/run, the bearer token from the Swarm secret
batch_etl_token) and fails when the job fails, so Airflow's retries and its UI show what happened.

The request code uses only the standard library, so the DAG needs no provider package.
"""

import json
import os
import urllib.error
import urllib.request

BATCH_ETL_URL = os.environ.get("SAWMILL_BATCH_ETL_URL", "http://batch_etl:8080")
BATCH_ETL_TOKEN_FILE = os.environ.get("SAWMILL_BATCH_ETL_TOKEN_FILE", "/run/secrets/batch_etl_token")
# The jobs of the batch_etl_jobs config; one task each.
JOBS = [j for j in os.environ.get("SAWMILL_BATCH_ETL_JOBS", "inbox_events").split(",") if j.strip()]


def trigger(job, base_url=BATCH_ETL_URL, token_file=BATCH_ETL_TOKEN_FILE, timeout=3600):
    """Runs one batch_etl job and returns its result; raises RuntimeError when the job did not succeed."""
    with open(token_file, encoding="utf-8") as f:
        token = f.read().strip()
    req = urllib.request.Request(
        "%s/jobs/%s/run" % (base_url.rstrip("/"), urllib.request.quote(job.strip(), safe="")),
        data=b"", method="POST", headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            result = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        body = e.read().decode("utf-8", "replace")[:500]
        raise RuntimeError("batch_etl job %s: HTTP %d: %s" % (job, e.code, body)) from None
    if result.get("status") not in ("ok", "skipped"):
        raise RuntimeError("batch_etl job %s: %s" % (job, json.dumps(result, sort_keys=True)))
    print("batch_etl job %s: %s" % (job, json.dumps(result, sort_keys=True)))
    return result


try:
    import pendulum
    from airflow import DAG
    from airflow.operators.python import PythonOperator
except ImportError:  # imported outside Airflow (the unit tests): only trigger() is used
    DAG = None

if DAG is not None:
    with DAG(
        dag_id="sawmill_batch_etl",
        description="Loads the platform's files and REST sources into PostgreSQL (images/batch_etl)",
        schedule="@daily",
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=5)},
        tags=["sawmill", "etl"],
    ) as dag:
        for name in JOBS:
            PythonOperator(task_id="run_" + name.strip().replace("-", "_").replace(".", "_"),
                           python_callable=trigger, op_args=[name.strip()])
