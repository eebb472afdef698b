import threading

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


class BookProxy(Book):
    """A proxy: its queries compile to Book's SQL, its objects are BookProxy."""

    objects = CachingManager()

    class Meta:
        proxy = True


class Pool(CachingMixin, models.Model):
    name = models.CharField(max_length=50)
    objects = CachingManager()


class PoolStyle(CachingMixin, models.Model):
    """A one-to-one whose select_related() sets the back-reference to the object returned."""

    name = models.CharField(max_length=50)
    pool = models.OneToOneField(Pool, models.CASCADE, related_name="poolstyle")
    objects = CachingManager()


class Guarded:
    """A field value pickle refuses (it holds a lock)."""

    def __init__(self, text):
        self.text = text
        self.lock = threading.Lock()

    def __eq__(self, other):
        return isinstance(other, Guarded) and other.text == self.text


class GuardedField(models.CharField):
    def from_db_value(self, value, expression, connection):
        return None if value is None else Guarded(value)

    def get_prep_value(self, value):
        return value.text if isinstance(value, Guarded) else value


class Secret(CachingMixin, models.Model):
    name = models.CharField(max_length=50)
    guarded = GuardedField(max_length=50)
    objects = CachingManager()

    class Meta:
        ordering = ["pk"]


class Item(CachingMixin, models.Model):
    owner = models.ForeignKey(Author, models.CASCADE, related_name="items")
    price = models.DecimalField(max_digits=8, decimal_places=2)
    objects = CachingManager()

    class Meta:
        ordering = ["pk"]
