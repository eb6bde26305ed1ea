"""The standalone worker process (``python -m workers``): the queues and jobs live in the app
(``app/core/queues.py`` and each domain's ``jobs.py``); this package only runs them."""
