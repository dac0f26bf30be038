"""Jobs: video, replay, score and train work run by ``depotwatch worker`` processes (Celery on
Redis), launched and followed through ``/api/v1/jobs``."""
