# The MLflow tracking server of deploy/k8s/mlflow.yaml: the MLflow the tests use (3.17.2,
# scripts/requirements-test.txt) plus the PostgreSQL driver it needs for its database backend.
#   docker build -f deploy/mlflow.Dockerfile -t digits-mlflow:3.17.2 deploy
FROM python:3.11-slim
RUN pip install --no-cache-dir mlflow==3.17.2 psycopg2-binary==2.9.10
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
