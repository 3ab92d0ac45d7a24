"""The batch pipeline and what drives it: the picklable job, input expansion, the local worker pool, the
Ray engine and its shards, and the results table writer."""
