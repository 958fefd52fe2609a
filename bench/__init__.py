"""`make bench`: router overhead, classifier latency/throughput and local LLM tokens/s."""
