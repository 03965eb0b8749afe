"""The plant's web dashboard and re-inspection station, served by `qc_cloud serve` next to the fleet API.

Cores without a web framework: accounts.py (roles, password hashing, session and CSRF tokens), review.py
(label answers, agreement figures), data.py (queries), dataset.py (training data set export). web.py is the
thin FastAPI/Jinja2 shell; templates/ and static/ are the pages."""
