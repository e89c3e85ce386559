"""Logger service: collects every managed process's log records into the file bucket and answers queries.

- ``logger.service``: ``LoggerService`` consumes ``<prefix>.logs`` and writes batches.
- ``logger.store``: the JSON Lines layout in the blob store and the query logic.
- ``logger.api``: ``GET /api/logs`` on the front door.
- ``logger.scope``: who may read which service's logs; it asks the AI manager, the deployer and
  the app manager over the bus whose a replica or an instance is (from the front door).

It talks to Kafka (in, and request/reply from the front door) and the blob store (out); nothing
else reads its folder of the bucket except through ``LogStore``.
"""
