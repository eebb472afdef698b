"""One table, three model classes over it: uncached, ours, and Cache Machine's."""

from caching import base as cache_machine
from django.db import models

from django_rustcache import orm


class Fields(models.Model):
    name = models.CharField(max_length=40)
    category = models.IntegerField(db_index=True)
    price = models.IntegerField()
    note = models.TextField()
    created = models.DateTimeField()

    class Meta:
        abstract = True


class PlainItem(Fields):
    class Meta:
        db_table = "bench_item"
        ordering = ["id"]


class OurItem(orm.CachingMixin, Fields):
    objects = orm.CachingManager()

    class Meta:
        db_table = "bench_item"
        managed = False
        ordering = ["id"]


class CMItem(cache_machine.CachingMixin, Fields):
    objects = cache_machine.CachingManager()

    class Meta:
        db_table = "bench_item"
        managed = False
        ordering = ["id"]
