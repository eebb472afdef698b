"""The query cache is invisible but for speed: a queryset served from the cache returns what
Django returns from the database (objects of the same class, values and relations), and raises
what Django raises. Each test reads twice, the second time from the cache, and compares with
what plain Django gives; each was a defect of the cache that stored pickled instances."""

import copy
import pickle
import warnings
from unittest import mock

import django
from django.core.cache import caches
from django.db import IntegrityError, connection, models, transaction
from django.db.models import FloatField, IntegerField, Prefetch, Sum
from django.db.transaction import TransactionManagementError
from django.db.utils import DJANGO_VERSION_PICKLE_KEY
from django.test import TransactionTestCase

from django_rustcache.orm import CachingManager, CachingMixin, _cache, _engine, _identity, _stored, base
from orm_tests.testapp.models import Author, Book, BookProxy, Guarded, Item, Pool, PoolStyle, Secret, Tag


class Twice(TransactionTestCase):
    databases = "__all__"

    def setUp(self):
        caches["default"].clear()
        self.ann = Author.objects.create(name="ann")
        self.bob = Author.objects.create(name="bob")
        self.books = [Book.objects.create(title=f"t{i}", author=self.ann if i % 2 else self.bob) for i in range(4)]

    def cached(self, make):
        """``make()`` from the database, then from the cache (no query): both results."""
        first = make()
        with self.assertNumQueries(0):
            second = make()
        return first, second


class CopyingAndPickling(Twice):
    """1. An instance read from the cache copies, deep-copies, pickles and caches like one read
    from the database (before: TypeError from the cache's own ModelState)."""

    def test_copy_deepcopy_pickle_and_cache_an_instance_from_the_cache(self):
        _, (book,) = self.cached(lambda: list(Book.objects.filter(pk=self.books[1].pk)))
        self.assertIs(book.from_cache, True)
        for twin in (copy.copy(book), copy.deepcopy(book), pickle.loads(pickle.dumps(book))):
            self.assertEqual((twin.pk, twin.title, twin.author_id), (book.pk, "t1", self.ann.pk))
            self.assertEqual((twin._state.db, twin._state.adding), ("default", False))
        caches["default"].set("a-book", book)
        self.assertEqual(caches["default"].get("a-book").title, "t1")

    def test_a_cached_parents_children_after_a_child_was_saved(self):
        _, (author,) = self.cached(lambda: list(Author.objects.filter(pk=self.ann.pk)))
        self.assertEqual([b.title for b in author.books.all()], ["t1", "t3"])
        Book.objects.create(title="t9", author=self.ann)
        children = list(author.books.all())
        self.assertEqual([b.title for b in children], ["t1", "t3", "t9"])
        self.assertIs(children[0].author, author)
        copy.deepcopy(children)

    def test_prefetch_then_iterator_then_a_reverse_manager(self):
        for _ in range(2):
            authors = list(Author.objects.prefetch_related("books").iterator(chunk_size=10))
            copied = copy.deepcopy(authors)
            self.assertEqual([[b.title for b in a.books.all()] for a in copied], [["t1", "t3"], ["t0", "t2"]])


class WhatPickleRefuses(Twice):
    """2. A model class pickle cannot import by name, or a field value pickle refuses, is read
    from the database every time, never an error (before: PicklingError/TypeError on every read)."""

    def test_a_model_made_in_a_function(self):
        class LocalBook(CachingMixin, models.Model):
            title = models.CharField(max_length=100)
            objects = CachingManager()

            class Meta:
                app_label = "testapp"
                db_table = "testapp_book"
                managed = False
                ordering = ["pk"]

        first, second = self.cached(lambda: [(type(b), b.title) for b in LocalBook.objects.all()])
        self.assertEqual(first, second)
        self.assertEqual(first[0], (LocalBook, "t0"))

    def test_an_auto_created_through_model(self):
        red = Tag.objects.create(label="red")
        self.books[0].tags.add(red)
        through = Book.tags.through
        rows = base.CachingQuerySet(through)
        first, second = self.cached(lambda: [(type(r), r.book_id, r.tag_id) for r in rows.all()])
        self.assertEqual(first, second)
        self.assertEqual(first, [(through, self.books[0].pk, red.pk)])

    def test_a_custom_field_value_pickle_refuses(self):
        # Its column is stored as the database returned it, and converted by the field on
        # every read, as Django does: each read gets its own value (its own lock).
        Secret.objects.create(name="s", guarded=Guarded("x"))
        first, second = self.cached(lambda: list(Secret.objects.all()))
        self.assertEqual((first[0].guarded, second[0].guarded), (Guarded("x"), Guarded("x")))
        self.assertIsNot(first[0].guarded.lock, second[0].guarded.lock)
        self.assertEqual((first[0].from_cache, second[0].from_cache), (False, True))
        first, second = self.cached(lambda: list(Secret.objects.filter(name="s").order_by("-pk")))
        self.assertIsNot(first[0].guarded.lock, second[0].guarded.lock)

    def test_a_value_pickle_refuses_is_not_stored(self):
        _engine._last_warning[0] = 0.0  # said at most every few seconds: now
        with self.assertLogs("django_rustcache.orm", "WARNING") as logs:
            self.assertIsNone(_stored._storable([(1, Guarded("x"))], 1))
        self.assertIn("not cached", logs.output[0])


class IteratorContract(Twice):
    """3. ``iterator()`` is Django's: an iterator, chunk_size checked, prefetching done."""

    def test_an_iterator(self):
        for _ in range(2):
            it = Book.objects.order_by("pk").iterator()
            self.assertIs(iter(it), it)
            self.assertEqual(next(it).title, "t0")
            self.assertEqual([b.title for b in it], ["t1", "t2", "t3"])

    def test_chunk_size_is_checked(self):
        for size in (0, -1):
            with self.assertRaisesMessage(ValueError, "Chunk size must be strictly positive."):
                Book.objects.iterator(chunk_size=size)

    def test_prefetch_related_with_iterator_is_not_n_plus_one(self):
        for queries in (2, 0):
            with self.assertNumQueries(queries):
                authors = list(Author.objects.prefetch_related("books").iterator(chunk_size=10))
                self.assertEqual([[b.title for b in a.books.all()] for a in authors], [["t1", "t3"], ["t0", "t2"]])

    def test_an_iterator_stopped_early_stores_nothing(self):
        it = Book.objects.iterator(chunk_size=1)
        next(it)
        it.close()
        with self.assertNumQueries(1):
            self.assertEqual(len(list(Book.objects.iterator(chunk_size=1))), 4)


class SameSqlDifferentResults(Twice):
    """4. Queries of one SQL that Django turns into different results have different entries."""

    def test_a_proxy_and_its_concrete_model(self):
        for shape in (lambda qs: qs.all(), lambda qs: qs.filter(author__name="ann")):
            books = list(shape(Book.objects))
            proxies, again = self.cached(lambda: list(shape(BookProxy.objects)))  # noqa: B023
            self.assertEqual({type(b) for b in proxies + again}, {BookProxy})
            self.assertEqual({type(b) for b in shape(Book.objects)}, {Book})
            self.assertEqual(books, list(shape(Book.objects)))

    def test_an_output_field_changes_the_values(self):
        # Sum(output_field=IntegerField()) and Sum(output_field=FloatField()) compile to one SQL;
        # Django converts its value to 383 for the one, 383.69 for the other.
        Item.objects.create(owner=self.ann, price="383.69")

        def totals(output_field):
            qs = Author.objects.filter(pk=self.ann.pk).annotate(total=Sum("items__price", output_field=output_field))
            return [(type(a.total), a.total) for a in qs]

        self.assertEqual(self.cached(lambda: totals(IntegerField())), ([(int, 383)],) * 2)
        self.assertEqual(self.cached(lambda: totals(FloatField())), ([(float, 383.69)],) * 2)
        self.assertEqual(totals(IntegerField()), [(int, 383)])

    def test_the_database_alias_is_part_of_the_key(self):
        self.cached(lambda: list(Book.objects.all()))
        with self.assertNumQueries(1, using="other"):
            self.assertEqual(list(Book.objects.using("other")), [])


class RelatedObjects(Twice):
    """5 and 8. Related objects are the caller's and Django's, never an old pickled copy."""

    def test_a_reverse_manager_carries_the_callers_parent(self):
        author = Author.objects.get(pk=self.ann.pk)
        self.cached(lambda: list(author.books.all()))
        author.name = "ann 2"
        author.save()
        books = list(author.books.all())
        self.assertTrue(all(b.author is author for b in books))
        self.assertEqual({b.author.name for b in books}, {"ann 2"})
        other = Author.objects.get(pk=self.ann.pk)
        for b in other.books.all():
            self.assertIs(b.author, other)

    def test_a_parent_joined_in_is_read_again_after_it_changes(self):
        self.cached(lambda: [b.author.name for b in Book.objects.select_related("author")])
        Author.objects.filter(pk=self.ann.pk).update(name="renamed")
        self.assertEqual({b.author.name for b in Book.objects.select_related("author")}, {"renamed", "bob"})

    def test_select_related_one_to_one_sets_the_back_reference(self):
        pool = Pool.objects.create(name="p")
        PoolStyle.objects.create(name="s", pool=pool)
        for style in self.cached(lambda: PoolStyle.objects.select_related("pool").get(name="s")):
            self.assertIs(style.pool.poolstyle, style)
            style.pool.poolstyle.name = "changed"
            self.assertEqual(style.name, "changed")

    def test_prefetch_objects_are_built_by_django(self):
        for authors in self.cached(
            lambda: list(Author.objects.prefetch_related(Prefetch("books", queryset=Book.objects.order_by("-pk"))))
        ):
            self.assertEqual([b.title for b in authors[0].books.all()], ["t3", "t1"])
            self.assertTrue(all(b.author is authors[0] for b in authors[0].books.all()))


class Transactions(Twice):
    """6. A broken transaction raises on every query, answered from the cache or not."""

    def test_a_broken_transaction_is_respected(self):
        with transaction.atomic():
            self.assertEqual(len(Book.objects.all()), 4)
            self.assertEqual(len(Book.objects.all()), 4)
            with self.assertRaises(IntegrityError):
                Author.objects.create(pk=self.ann.pk, name="duplicate")
            self.assertTrue(connection.needs_rollback)
            with self.assertRaises(TransactionManagementError):
                list(Book.objects.all())
            with self.assertRaises(TransactionManagementError):
                list(Book.objects.raw("SELECT * FROM testapp_book"))
            transaction.set_rollback(True)
        self.assertEqual(len(Book.objects.all()), 4)


class PicklingAQueryset(Twice):
    """7. Pickling a caching queryset is Django's: evaluated first, its version recorded."""

    def test_pickled_results_are_those_of_the_moment(self):
        qs = Book.objects.filter(author=self.ann)
        with self.assertNumQueries(1):
            data = pickle.dumps(qs)
        Book.objects.create(title="later", author=self.ann)
        with self.assertNumQueries(0):
            self.assertEqual([b.title for b in pickle.loads(data)], ["t1", "t3"])
        self.assertEqual([b.title for b in Book.objects.filter(author=self.ann)], ["t1", "t3", "later"])

    def test_a_version_mismatch_is_warned_about(self):
        state = Book.objects.all().__getstate__()
        self.assertEqual(state[DJANGO_VERSION_PICKLE_KEY], django.__version__)
        state[DJANGO_VERSION_PICKLE_KEY] = "1.0"
        qs = base.CachingQuerySet(Book)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            qs.__setstate__(state)
        self.assertIn("Pickled queryset instance's Django version 1.0", str(caught[0].message))


def state(obj, depth=1):
    """Everything Django's build leaves on an object, in order (ours adds only ``from_cache``),
    and on the related objects it caches."""
    values = {k: v for k, v in vars(obj).items() if k not in ("_state", "from_cache")}
    model_state = {k: v for k, v in vars(obj._state).items() if k not in ("fields_cache", "peers")}
    cached = dict(obj._state.__dict__.get("fields_cache") or {})
    related = {k: state(v, depth - 1) if depth and v is not None else type(v) for k, v in cached.items()}
    return type(obj), list(values.items()), model_state, related


class BuiltAsDjangoBuildsThem(Twice):
    """A hit builds objects without ``Model.__init__`` where Django would only store the values:
    the result must be what Django builds, attribute for attribute and in the same order."""

    def test_every_shape(self):
        author = Author.objects.get(pk=self.ann.pk)
        shapes = {
            "all": lambda: Book.objects.all(),
            "filter": lambda: Book.objects.filter(pages=100, title__in=["t1", "t2"]),
            "join": lambda: Book.objects.filter(author__name="ann"),
            "only": lambda: Book.objects.only("title"),
            "defer": lambda: Book.objects.defer("data", "pages"),
            "annotate": lambda: Author.objects.annotate(n=Sum("books__pages")),
            "reverse manager": lambda: author.books.all(),
            "reverse manager, only": lambda: author.books.only("title", "author_id"),
            "proxy": lambda: BookProxy.objects.filter(pk__gt=0),
            "select_related": lambda: Book.objects.select_related("author"),
        }
        real = _stored._builder
        for name, make in shapes.items():
            with self.subTest(name):
                django_built = [state(o) for o in make().no_cache()]
                self.cached(lambda: list(make()))  # noqa: B023
                built = []
                with (
                    self.assertNumQueries(0),
                    mock.patch.object(_stored, "_builder", lambda *a, built=built: built.append(real(*a)) or built[-1]),
                ):
                    ours = list(make())
                self.assertTrue(all(o.from_cache for o in ours))
                self.assertEqual([state(o) for o in ours], django_built)
                # Built by ours, not Django's iterable, except where Django's related
                # populators are needed.
                self.assertEqual(bool(built and built[0]), name != "select_related", built)

    def test_init_signals_and_custom_from_db_are_honoured(self):
        from django.db.models.signals import post_init

        seen = []

        def receiver(sender, instance, **kwargs):
            seen.append(instance.title)

        post_init.connect(receiver, sender=Book)
        try:
            self.cached(lambda: list(Book.objects.all()))
        finally:
            post_init.disconnect(receiver, sender=Book)
        self.assertEqual(seen, ["t0", "t1", "t2", "t3"] * 2)


class Volatile(Twice):
    """A query whose answer changes with no write (a random order, the clock) is not cached."""

    def test_random_order_and_the_clock(self):
        from django.db.models.functions import Now

        for make in (
            lambda: list(Book.objects.order_by("?")),
            lambda: list(Book.objects.filter(author__name="ann").order_by("?")),
            lambda: list(Author.objects.annotate(at=Now())),
            lambda: list(Book.objects.raw("SELECT * FROM testapp_book ORDER BY RANDOM()")),
        ):
            for _ in range(2):
                with self.assertNumQueries(1):
                    make()

    def test_a_name_that_looks_like_a_function_is_not_volatile(self):
        self.assertFalse(_identity._volatile('SELECT "t"."now", `t`.`random` FROM "t"'))
        self.assertTrue(_identity._volatile('SELECT "t"."a" FROM "t" ORDER BY RANDOM() ASC'))


class RowsHeldInProcess(Twice):
    """Rows of plain values this process read or stored are held with their stamp: a hit then
    reads only the tables' generations. A write, a clear or the timeout ends that."""

    def keys_read(self, make):
        asked = []
        real = caches["default"].get_many

        def spy(keys, *args, **kwargs):
            asked.append(list(keys))
            return real(keys, *args, **kwargs)

        with mock.patch.object(caches["default"], "get_many", spy):
            result = make()
        return result, asked

    def test_a_hit_reads_the_generations_only(self):
        for make in (
            lambda: [a.name for a in Author.objects.filter(name="ann")],  # by its structure
            lambda: [a.name for a in Author.objects.filter(books__title="t1")],  # by its SQL
        ):
            self.cached(make)
            result, asked = self.keys_read(make)
            self.assertEqual(result, ["ann"])
            # One get_many, of the generations of the tables read (the entry is not read).
            generations = {_engine.generation_key(t) for t in ("testapp_author", "testapp_book")}
            self.assertEqual(len(asked), 1)
            self.assertTrue(set(asked[0]) <= generations, asked)

    def test_a_write_a_clear_and_the_timeout(self):
        make = lambda: [a.name for a in Author.objects.order_by("pk")]  # noqa: E731
        self.cached(make)
        Author.objects.filter(pk=self.ann.pk).update(name="new")
        with self.assertNumQueries(1):
            self.assertEqual(make()[0], "new")
        caches["default"].clear()
        with self.assertNumQueries(1):
            make()
        self.assertEqual(len(self.keys_read(make)[1][0]), 1)
        # Held no longer than the entry's timeout: after it, the entry is read again.
        short = lambda: [a.name for a in Author.objects.cache(1).filter(name="bob")]  # noqa: E731
        self.cached(short)
        self.assertEqual(len(self.keys_read(short)[1][0]), 1)
        later = _cache.time.monotonic() + 2
        with mock.patch.object(_cache.time, "monotonic", return_value=later):
            self.assertEqual(len(self.keys_read(short)[1][0]), 2)

    def test_values_a_caller_can_change_are_not_held(self):
        Book.objects.filter(pk=self.books[0].pk).update(data={"k": [1]})
        make = lambda: list(Book.objects.filter(pk=self.books[0].pk))  # noqa: E731
        _, second = self.cached(make)
        second[0].data["k"].append(2)
        (third,) = make()
        self.assertEqual(third.data, {"k": [1]})
        _, asked = self.keys_read(make)
        self.assertEqual(len(asked[0]), 2)  # the entry is read each time

    def test_an_empty_result_held_is_served(self):
        from django.test import override_settings

        with override_settings(CACHE_EMPTY_QUERYSETS=True):
            for make in (
                lambda: list(Author.objects.filter(name="nobody")),
                lambda: list(Author.objects.filter(books__title="nothing")),
            ):
                self.assertEqual(self.cached(make), ([], []))
                with self.assertNumQueries(0):
                    self.assertEqual(make(), [])


class DamagedEntries(Twice):
    """A stored value of another shape (damaged, or written by another version) is a miss: the
    rows come from the database and replace it, never an error."""

    def test_raw_and_model_queries(self):
        for make in (
            lambda: [b.title for b in Book.objects.raw("SELECT * FROM testapp_book ORDER BY id")],
            lambda: [a.name for a in Author.objects.filter(books__title="t1")],
            lambda: [a.name for a in Author.objects.filter(name="ann")],
        ):
            expected = make()
            for bad in ([1, 2, 3], [[("id",)], [(1, 2)]], [(1,)], [[], "rows"]):
                _cache._memo.clear()
                with mock.patch.object(_stored, "_load", return_value=bad), self.assertNumQueries(1):
                    self.assertEqual(make(), expected)
