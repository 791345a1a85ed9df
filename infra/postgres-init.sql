CREATE DATABASE mlflow;
-- users and grants of the MLflow basic-auth app
CREATE DATABASE mlflow_auth;
