"""What every stage runs on: errors, where things are kept (paths, the cache inventory), devices and
precision, Dask clusters. Nothing here imports a stage above it."""
