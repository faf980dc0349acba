from django.db import models


class Note(models.Model):
    """A note with an attachment: the row lives in Postgres, the file in Blob Storage."""

    text = models.CharField(max_length=200)
    attachment = models.FileField(upload_to="notes/", blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return self.text
