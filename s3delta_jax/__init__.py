"""s3delta_jax: S3Delta / S3PET sparse structure search for parameter-efficient tuning, in JAX/Flax."""

__version__ = "0.1.0"
