"""What the tasks did, for the test to read."""

from django.db import models


class Event(models.Model):
    """One run of a task (or of a tombstone handler)."""

    kind = models.CharField(max_length=40)
    detail = models.CharField(max_length=200)
    #: Whether the worker thread's database connection was open when the task began.
    connection_open = models.BooleanField(null=True)
