"""The Batch API: files of requests run in the background, at low priority, resumable across gateway restarts.

files.py   the Files API's files on disk under the data directory (inputs, and the batches' output and error files)
state.py   batches between restarts: the object, one recorded result per line, the cancel flag, the lease (Redis,
           or files and flock without it)
lines.py   input lines parsed and checked, one line run through the dialect that serves its URL, output lines
runner.py  Batches (one per gateway: finds batches to run, caps the lines in flight) and BatchRun (one batch)
routes.py  /v1/files and /v1/batches, in OpenAI's shapes
"""
