from django.db import models


class Cache(models.Model):
    """No table: the admin's handle for the caches' page and its permissions (``view_cache`` to
    see it, ``delete_cache`` to delete keys)."""

    class Meta:
        managed = False
        verbose_name = "cache"
        verbose_name_plural = "caches"
        default_permissions = ("view", "delete")
