"""`make run` tooling: start the bundled Triton server and the router on one machine. Used by
`make run`, the tests and the benchmarks; not part of the router image (in Kubernetes NVIDIA's
Triton image and gunicorn do this)."""
