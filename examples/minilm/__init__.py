"""S3PET on all-MiniLM-L6-v2 through the public s3delta_jax.search API: see README.md and run.py."""
