# MLflow tracking server with a PostgreSQL backend. Build from the repository root:
#   docker build -f docker/mlflow.Dockerfile -t peft-search-mlflow:latest .
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

RUN pip install --no-cache-dir "mlflow>=3.1,<4" "psycopg2-binary>=2.9,<3"

RUN useradd --create-home --uid 1000 --shell /bin/bash mlflow \
    && mkdir -p /mlartifacts \
    && chown mlflow:mlflow /mlartifacts
USER 1000:1000
WORKDIR /home/mlflow

EXPOSE 5000

# Stand-alone default: MLflow's local store in the home folder; compose passes PostgreSQL.
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", \
     "--artifacts-destination", "/mlartifacts", "--serve-artifacts"]
