# The MLflow tracking server of deploy/k8s/mlflow.yaml: the MLflow the tests use (3.17.2,
# scripts/requirements-test.txt) plus a PostgreSQL driver for its database backend: psycopg 3,
# named in the URI (postgresql+psycopg://), since SQLAlchemy 2.1's default driver for plain
# postgresql:// is psycopg 3 too and psycopg2 would go unused.
#   docker build -f deploy/mlflow.Dockerfile -t digits-mlflow:3.17.2 deploy
FROM python:3.11-slim
RUN pip install --no-cache-dir mlflow==3.17.2 'psycopg[binary]==3.3.9'
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
