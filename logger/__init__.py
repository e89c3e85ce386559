"""Logger service: collects every managed process's log records into the file bucket and answers queries.

- ``logger.service``: ``LoggerService`` consumes ``<prefix>.logs`` and writes batches.
- ``logger.store``: the JSON Lines layout in the blob store and the query logic.
- ``logger.api``: ``GET /api/logs`` on the front door.

It talks to Kafka (in) and the blob store (out); nothing else reads its folder
of the bucket except through ``LogStore``.
"""
