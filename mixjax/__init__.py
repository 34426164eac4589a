"""mixjax: mixup regularization in JAX/Flax. The public API is re-exported here."""
