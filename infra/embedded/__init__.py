"""The embedded platform on loopback: the supervisor, Postgres, S3 and MLflow servers of every region."""
