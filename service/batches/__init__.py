"""Batches: OpenAI-shaped JSONL files whose lines run as ordinary ezq jobs.

``lines`` checks a file line by line, ``files`` stores and reads files, ``submit`` turns a
file into a batch of jobs, ``results`` renders output and error lines from the jobs,
``views`` shows a batch as OpenAI's ``Batch`` object, ``lifecycle`` cancels and finalises
batches (the sweep calls it), ``cli`` is ``ezq batch``.
"""
