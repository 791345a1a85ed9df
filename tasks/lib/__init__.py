"""What the tasks are built from but are not tasks themselves: the S3 client and transfers, the
checkpoint stores, the registry's promotion lock and the pyfunc model MLflow loads."""
