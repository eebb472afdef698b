from django.db import models

from django_rustcache.orm import CachingManager, CachingMixin


class Book(CachingMixin, models.Model):
    title = models.CharField(max_length=100)

    objects = CachingManager()

    class Meta:
        app_label = "shop"
