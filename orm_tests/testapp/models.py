from django.db import models

from django_rustcache.orm import CachingManager, CachingMixin, cached_method


class Author(CachingMixin, models.Model):
    name = models.CharField(max_length=50)
    objects = CachingManager()

    class Meta:
        base_manager_name = "objects"
        ordering = ["pk"]


class Tag(CachingMixin, models.Model):
    label = models.CharField(max_length=50)
    objects = CachingManager()

    class Meta:
        ordering = ["pk"]


class Book(CachingMixin, models.Model):
    title = models.CharField(max_length=100)
    pages = models.IntegerField(default=100)
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="books")
    tags = models.ManyToManyField(Tag, related_name="books", blank=True)
    data = models.JSONField(default=dict, blank=True)
    objects = CachingManager()
    calls = 0

    class Meta:
        ordering = ["pk"]

    @cached_method
    def summary(self, suffix=""):
        """A summary of the book."""
        type(self).calls += 1
        return f"{self.title} by {self.author.name}{suffix}"


class Place(CachingMixin, models.Model):
    name = models.CharField(max_length=50)
    objects = CachingManager()

    class Meta:
        ordering = ["pk"]


class Restaurant(Place):
    """Multi-table inheritance: a row in place and one in restaurant."""

    stars = models.IntegerField(default=1)
    objects = CachingManager()


class Plain(models.Model):
    """Not cached: a model whose table raw SQL may join."""

    value = models.IntegerField()
