"""The ORM query cache through its API: hits, every write path, transactions, databases."""

import datetime
import logging
import pickle
import threading

from django.core.cache import caches
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection, connections, transaction
from django.template import Context, Template
from django.test import TestCase, TransactionTestCase, override_settings

from django_rustcache.orm import base, config, invalidate, invalidation
from orm_tests.testapp.models import Author, Book, Place, Plain, Restaurant, Tag


class CacheTestCase(TransactionTestCase):
    """Autocommit (as a site runs), a cleared cache, some rows."""

    databases = "__all__"

    def setUp(self):
        caches["default"].clear()
        self.ann = Author.objects.create(name="ann")
        self.bob = Author.objects.create(name="bob")
        self.books = [Book.objects.create(title=f"t{i}", author=self.ann if i % 2 else self.bob) for i in range(6)]
        self.red = Tag.objects.create(label="red")
        self.books[0].tags.add(self.red)

    def assertCached(self, make, expected=None, using="default"):
        """``make()`` twice: the second time from the cache, with no query; returns the value."""
        first = make()
        with self.assertNumQueries(0, using=using):
            second = make()
        self.assertEqual(first, second)
        if expected is not None:
            self.assertEqual(second, expected)
        return second

    def assertQueried(self, make, expected, using="default"):
        """``make()`` runs SQL (its cached result was invalidated) and returns ``expected``."""
        with self.assertNumQueries(1, using=using):
            value = make()
        self.assertEqual(value, expected)


def titles(qs):
    return [b.title for b in qs]


class HitTests(CacheTestCase):
    def test_filter_get_count_slice_first(self):
        self.assertCached(lambda: titles(Book.objects.filter(author=self.ann)), ["t1", "t3", "t5"])
        self.assertCached(lambda: Book.objects.get(pk=self.books[2].pk).title, "t2")
        self.assertCached(lambda: Book.objects.filter(pages=100).count(), 6)
        self.assertCached(lambda: titles(Book.objects.all()[1:3]), ["t1", "t2"])
        self.assertCached(lambda: Book.objects.order_by("-title").first().title, "t5")

    def test_from_cache_flag(self):
        self.assertEqual({b.from_cache for b in Book.objects.all()}, {False})
        self.assertEqual({b.from_cache for b in Book.objects.all()}, {True})

    def test_select_related_and_joins(self):
        def names():
            return [(b.title, b.author.name) for b in Book.objects.select_related("author").filter(author__name="ann")]

        self.assertCached(names, [("t1", "ann"), ("t3", "ann"), ("t5", "ann")])
        self.assertCached(lambda: titles(Book.objects.filter(tags__label="red")), ["t0"])

    def test_raw_queries(self):
        sql = f"SELECT * FROM {Book._meta.db_table} WHERE pages = %s ORDER BY id"
        self.assertCached(lambda: titles(Book.objects.raw(sql, [100])), [f"t{i}" for i in range(6)])

    def test_select_for_update_is_never_cached(self):
        titles(Book.objects.filter(pages=100))
        with transaction.atomic(), self.assertNumQueries(2):
            titles(Book.objects.select_for_update().filter(pages=100))
            titles(Book.objects.select_for_update().filter(pages=100))

    def test_values_are_not_cached(self):
        with self.assertNumQueries(2):
            list(Book.objects.values("title"))
            list(Book.objects.values_list("title"))

    def test_no_cache_and_timeouts(self):
        with self.assertNumQueries(2):
            list(Book.objects.no_cache())
            list(Book.objects.no_cache())
        qs = Book.objects.no_cache().cache(30)
        self.assertEqual(qs.timeout, 30)
        self.assertEqual(qs.no_cache().timeout, config.NO_CACHE)
        self.assertCached(lambda: titles(qs.filter(pages=100)))

    def test_distinct_parameters_never_share_a_key(self):
        # Cache Machine keyed on ``sql % params``: these two rendered the same.
        Book.objects.filter(pk=self.books[0].pk).update(title="a, b")
        Book.objects.filter(pk=self.books[1].pk).update(title="a")
        Book.objects.filter(pk=self.books[2].pk).update(title="b")
        self.assertEqual(titles(Book.objects.filter(title__in=["a, b"])), ["a, b"])
        self.assertEqual(titles(Book.objects.filter(title__in=["a", "b"])), ["a", "b"])

    def test_a_query_identified_without_sql_is_identified_exactly(self):
        # Simple queries are keyed by their structure, not their SQL (count(), and the rows of
        # a query whose objects are plain to build): two with the same key must compile to the
        # same SQL and parameters (one SQL may have several keys: 1 and "1").
        from django.db.models import Q

        day = datetime.date(2026, 1, 1)
        shapes = [
            Book.objects.all(),
            Book.objects.filter(pk=1),
            Book.objects.filter(pk="1"),
            Book.objects.filter(pk=True),
            Book.objects.filter(pk=1.0),
            Book.objects.filter(title="1"),
            Book.objects.filter(title__iexact="1"),
            Book.objects.filter(title__in=["a, b"]),
            Book.objects.filter(title__in=["a", "b"]),
            Book.objects.filter(title__in=("a", "b")),
            Book.objects.filter(pages__range=(1, 5)),
            Book.objects.filter(pages__gt=5),
            Book.objects.exclude(pages__gt=5),
            Book.objects.filter(Q(pages=1) | Q(pages=2)),
            Book.objects.filter(Q(pages=1) & Q(pages=2)),
            Book.objects.filter(~Q(pages=1)),
            Book.objects.filter(author=self.ann),
            Book.objects.filter(author_id=self.ann.pk),
            Book.objects.filter(author__name="ann"),
            Book.objects.filter(title=None),
            Book.objects.filter(title__isnull=True),
            Book.objects.filter(pages=1).order_by("-title"),
            Book.objects.filter(pages=1).order_by("title"),
            Book.objects.filter(pages=1).order_by(),
            Book.objects.filter(pages=1).reverse(),
            Book.objects.filter(pages=1)[2:5],
            Book.objects.filter(pages=1)[:5],
            Book.objects.filter(pages=1).only("title"),
            Book.objects.filter(pages=1).select_related("author"),
            Book.objects.filter(pages=1).distinct(),
            Book.objects.filter(data__k="v"),
            Book.objects.filter(pages=1).extra(where=["1=1"]),
            Author.objects.filter(name=day.isoformat()),
            Restaurant.objects.filter(stars=2),
            Restaurant.objects.filter(name="x"),
            Place.objects.filter(name="x"),
        ]
        by_key = {}
        simple = 0
        for qs in shapes:
            identity = qs._cache_identity()[0]
            simple += "fp:" in identity
            compiled = repr(qs._sql())
            self.assertEqual(by_key.setdefault(identity, compiled), compiled, identity)
        self.assertGreater(simple, 20)  # most of these are keyed without compiling
        # The database is part of it.
        self.assertNotEqual(Book.objects.all()._cache_identity(), Book.objects.using("other")._cache_identity())

    def test_an_instance_from_the_cache_behaves_as_a_loaded_one(self):
        Book.objects.get(pk=self.books[0].pk)
        book = Book.objects.get(pk=self.books[0].pk)
        self.assertTrue(book.from_cache)
        self.assertEqual((book._state.db, book._state.adding), ("default", False))
        self.assertEqual(book.author.name, "bob")  # fields_cache is the instance's own
        other = Book.objects.get(pk=self.books[0].pk)
        self.assertNotIn("author", other._state.__dict__.get("fields_cache", {}))
        copied = pickle.loads(pickle.dumps(book))
        self.assertEqual(
            (type(copied._state).__name__, copied._state.db, copied._state.adding), ("ModelState", "default", False)
        )
        book.title = "saved from cache"
        book.save()
        self.assertEqual(Book.objects.get(pk=book.pk).title, "saved from cache")
        self.assertEqual(Book.objects.using("other").count(), 0)

    def test_a_changed_object_does_not_change_the_cache(self):
        for book in Book.objects.filter(pk=self.books[0].pk).iterator():
            book.title = "changed by the caller"
            book.data["k"] = "v"
        book = Book.objects.get(pk=self.books[0].pk)
        self.assertEqual(book.title, "t0")

    def test_empty_results_cached_only_when_asked(self):
        with self.assertNumQueries(2):
            self.assertEqual(list(Book.objects.filter(title="none")), [])
            self.assertEqual(list(Book.objects.filter(title="none")), [])
        with override_settings(CACHE_EMPTY_QUERYSETS=True):
            self.assertCached(lambda: list(Book.objects.filter(title="none")), [])
            Book.objects.create(title="none", author=self.ann)
            self.assertQueried(lambda: titles(Book.objects.filter(title="none")), ["none"])

    def test_results_over_the_row_limit_stream_uncached(self):
        with override_settings(CACHE_MACHINE_MAX_ROWS=4):
            with self.assertNumQueries(2):
                self.assertEqual(len(list(Book.objects.all())), 6)
                self.assertEqual(len(list(Book.objects.all().iterator())), 6)
            self.assertCached(lambda: titles(Book.objects.all()[:4]))

    def test_empty_in(self):
        with self.assertNumQueries(0):
            self.assertEqual(list(Book.objects.filter(pk__in=[])), [])
            self.assertEqual(Book.objects.filter(pk__in=[]).count(), 0)

    def test_fetch_by_id(self):
        with override_settings(FETCH_BY_ID=True):
            # A query's own rows are cached: one query on a miss, none after.
            with self.assertNumQueries(1):
                self.assertEqual(titles(Book.objects.filter(author=self.ann)), ["t1", "t3", "t5"])
            with self.assertNumQueries(0):
                self.assertEqual(titles(Book.objects.filter(author=self.ann)), ["t1", "t3", "t5"])
            Book.objects.filter(pk=self.books[1].pk).update(title="new")
            self.assertEqual(titles(Book.objects.filter(author=self.ann)), ["new", "t3", "t5"])
        # Cache Machine's method, called directly: the ids, then their objects, in id order.
        qs = Book.objects.filter(author=self.ann).order_by("-pk")
        with self.assertNumQueries(2):
            self.assertEqual([b.title for b in qs.fetch_by_id()], ["t5", "t3", "new"])
        with self.assertNumQueries(0):
            self.assertEqual([b.title for b in qs.fetch_by_id()], ["t5", "t3", "new"])

    def test_pickled_queryset_keeps_its_timeout(self):
        self.assertIs(pickle.loads(pickle.dumps(Book.objects.all())).timeout, DEFAULT_TIMEOUT)
        self.assertEqual(pickle.loads(pickle.dumps(Book.objects.cache(10))).timeout, 10)

    def test_cached_method(self):
        Book.calls = 0
        book = Book.objects.get(pk=self.books[0].pk)
        self.assertEqual(book.summary(), "t0 by bob")
        self.assertEqual(Book.objects.get(pk=self.books[0].pk).summary(), "t0 by bob")
        self.assertEqual(Book.calls, 1)
        self.assertEqual(book.summary("!"), "t0 by bob!")
        self.assertEqual(Book.calls, 2)
        book.title = "retitled"
        book.save()
        self.assertEqual(Book.objects.get(pk=book.pk).summary(), "retitled by bob")
        self.assertEqual(Book.calls, 3)
        self.assertEqual(Book.summary.__doc__, "A summary of the book.")

    def test_cached_and_cached_with(self):
        calls = []

        def f():
            calls.append(1)
            return len(calls)

        self.assertEqual(base.cached(f, "k"), 1)
        self.assertEqual(base.cached(f, "k"), 1)
        book = Book.objects.get(pk=self.books[0].pk)
        self.assertEqual(base.cached_with(book, f, "k"), 2)
        self.assertEqual(base.cached_with(book, f, "k"), 2)
        Book.objects.filter(pk=book.pk).update(pages=1)
        self.assertEqual(base.cached_with(book, f, "k"), 3)
        self.assertEqual(base.cached_with([], f, "k"), 4)  # nothing to key on: just called

    def test_async_queries(self):
        from asgiref.sync import async_to_sync

        async def read():
            return [b.title async for b in Book.objects.filter(author=self.bob)], await Book.objects.acount()

        self.assertEqual(async_to_sync(read)(), (["t0", "t2", "t4"], 6))
        with self.assertNumQueries(0):
            self.assertEqual(async_to_sync(read)(), (["t0", "t2", "t4"], 6))


class WritePathTests(CacheTestCase):
    """Every way a row changes invalidates the queries that read it."""

    def by_ann(self):
        return titles(Book.objects.filter(author=self.ann))

    def test_save_create_delete(self):
        self.assertCached(self.by_ann)
        book = self.books[1]
        book.title = "saved"
        book.save()
        self.assertQueried(self.by_ann, ["saved", "t3", "t5"])
        self.assertCached(self.by_ann)
        Book.objects.create(title="created", author=self.ann)
        self.assertQueried(self.by_ann, ["saved", "t3", "t5", "created"])
        self.assertCached(self.by_ann)
        book.delete()
        self.assertQueried(self.by_ann, ["t3", "t5", "created"])

    def test_queryset_update_and_delete(self):
        self.assertCached(self.by_ann)
        Book.objects.filter(title="t3").update(title="updated")
        self.assertQueried(self.by_ann, ["t1", "updated", "t5"])
        self.assertCached(self.by_ann)
        Book.objects.filter(title="t5").delete()
        self.assertQueried(self.by_ann, ["t1", "updated"])

    def test_bulk_create_and_bulk_update(self):
        self.assertCached(self.by_ann)
        Book.objects.bulk_create([Book(title="bulk1", author=self.ann), Book(title="bulk2", author=self.ann)])
        self.assertQueried(self.by_ann, ["t1", "t3", "t5", "bulk1", "bulk2"])
        self.assertCached(self.by_ann)
        books = list(Book.objects.filter(title__startswith="bulk"))
        for b in books:
            b.title = b.title.upper()
        Book.objects.bulk_update(books, ["title"])
        self.assertQueried(self.by_ann, ["t1", "t3", "t5", "BULK1", "BULK2"])

    def test_get_or_create_and_update_or_create(self):
        self.assertCached(self.by_ann)
        Book.objects.update_or_create(title="t1", defaults={"pages": 7})
        self.assertEqual([b.pages for b in Book.objects.filter(author=self.ann)], [7, 100, 100])
        Book.objects.get_or_create(title="goc", author=self.ann)
        self.assertQueried(self.by_ann, ["t1", "t3", "t5", "goc"])

    def test_many_to_many(self):
        book = self.books[2]

        def red():
            return titles(Book.objects.filter(tags__label="red"))

        def labels():
            return [t.label for t in Book.objects.get(pk=book.pk).tags.all()]

        self.assertCached(red, ["t0"])
        self.assertEqual(labels(), [])
        book.tags.add(self.red)
        self.assertEqual(red(), ["t0", "t2"])
        self.assertCached(labels, ["red"])
        self.red.label = "crimson"
        self.red.save()
        self.assertEqual(labels(), ["crimson"])
        self.red.label = "red"
        self.red.save()
        self.assertCached(red)
        book.tags.remove(self.red)
        self.assertEqual(red(), ["t0"])
        self.books[0].tags.clear()
        self.assertEqual(red(), [])
        book.tags.set([self.red])
        self.assertEqual(red(), ["t2"])
        self.assertCached(lambda: [b.title for b in self.red.books.all()], ["t2"])
        self.red.books.add(self.books[4])
        self.assertEqual([b.title for b in self.red.books.all()], ["t2", "t4"])

    def test_reverse_foreign_key(self):
        self.assertCached(lambda: titles(self.ann.books.all()), ["t1", "t3", "t5"])
        self.books[1].author = self.bob
        self.books[1].save()
        self.assertEqual(titles(Author.objects.get(pk=self.ann.pk).books.all()), ["t3", "t5"])

    def test_related_model_changes_join_results(self):
        def ann_books():
            return titles(Book.objects.filter(author__name="ann"))

        self.assertCached(ann_books, ["t1", "t3", "t5"])
        Author.objects.filter(pk=self.ann.pk).update(name="anne")
        self.assertQueried(ann_books, [])

    def test_raw_sql_writes(self):
        self.assertCached(self.by_ann)
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {Book._meta.db_table} SET title = %s WHERE title = %s", ["raw", "t1"])
        self.assertQueried(self.by_ann, ["raw", "t3", "t5"])
        with connection.cursor() as cursor:
            cursor.execute(f'/* a comment */ delete from "{Book._meta.db_table}" where title = %s', ["raw"])
        self.assertQueried(self.by_ann, ["t3", "t5"])

    def test_raw_query_over_a_table_no_caching_model_owns(self):
        Plain.objects.create(value=self.books[0].pk)
        book_table, plain_table = Book._meta.db_table, Plain._meta.db_table
        sql = f"SELECT b.* FROM {book_table} b JOIN {plain_table} p ON p.value = b.id ORDER BY b.id"

        def joined():
            return titles(Book.objects.raw(sql))

        self.assertCached(joined, ["t0"])
        Plain.objects.create(value=self.books[1].pk)
        self.assertQueried(joined, ["t0", "t1"])

    def test_multi_table_inheritance(self):
        r = Restaurant.objects.create(name="diner", stars=2)
        self.assertCached(lambda: [p.name for p in Place.objects.all()], ["diner"])
        self.assertCached(lambda: [(x.name, x.stars) for x in Restaurant.objects.all()], [("diner", 2)])
        r.name = "bistro"
        r.save()
        self.assertEqual([p.name for p in Place.objects.all()], ["bistro"])
        Place.objects.filter(pk=r.pk).update(name="cafe")
        self.assertEqual([(x.name, x.stars) for x in Restaurant.objects.all()], [("cafe", 2)])

    def test_public_invalidate(self):
        self.assertCached(self.by_ann)
        with connection.cursor() as cursor:
            # A write we cannot see: a function, another program... the site says so.
            cursor.execute(f"SELECT COUNT(*) FROM {Book._meta.db_table}")
        invalidate(Book)
        self.assertQueried(self.by_ann, ["t1", "t3", "t5"])
        for target in (Book._meta.db_table, self.books[0], Book.objects.all()):
            self.assertCached(self.by_ann)
            invalidate(target)
            self.assertQueried(self.by_ann, ["t1", "t3", "t5"])
        with self.assertRaises(TypeError):
            invalidate(42)

    def test_migrations_invalidate_everything(self):
        self.assertCached(self.by_ann)
        call_command("migrate", "testapp", verbosity=0)
        self.assertQueried(self.by_ann, ["t1", "t3", "t5"])

    def test_an_evicted_generation_does_not_revive_old_entries(self):
        self.assertCached(self.by_ann)
        key = base._engine.generation_key(Book._meta.db_table)
        old = caches["default"].get(key)
        Book.objects.filter(title="t1").update(title="x")
        caches["default"].delete(key)  # evicted
        self.assertQueried(self.by_ann, ["x", "t3", "t5"])
        self.assertNotEqual(caches["default"].get(key), old)


class TransactionTests(CacheTestCase):
    def by_ann(self):
        return titles(Book.objects.filter(author=self.ann))

    def other_thread(self, f):
        out = []
        t = threading.Thread(target=lambda: (out.append(f()), connections.close_all()))
        t.start()
        t.join()
        return out[0]

    def test_writes_publish_at_the_outermost_commit(self):
        self.assertCached(self.by_ann)
        with transaction.atomic():
            Book.objects.filter(title="t1").update(title="in-txn")
            # This transaction sees its write at once, through its private cache...
            self.assertEqual(self.by_ann(), ["in-txn", "t3", "t5"])
            with self.assertNumQueries(0):
                self.assertEqual(self.by_ann(), ["in-txn", "t3", "t5"])
            with transaction.atomic():
                Book.objects.filter(title="t3").update(title="nested")
            self.assertEqual(self.by_ann(), ["in-txn", "nested", "t5"])
            # ...and another connection still gets the committed rows, from the shared cache.
            self.assertEqual(self.other_thread(self.by_ann), ["t1", "t3", "t5"])
        self.assertEqual(self.other_thread(self.by_ann), ["in-txn", "nested", "t5"])
        self.assertCached(self.by_ann, ["in-txn", "nested", "t5"])

    def test_rollback_publishes_nothing_and_leaves_nothing(self):
        self.assertCached(self.by_ann)
        key = base._engine.generation_key(Book._meta.db_table)
        generation = caches["default"].get(key)
        with self.assertRaises(RuntimeError), transaction.atomic():
            Book.objects.filter(title="t1").update(title="rolled back")
            self.assertEqual(self.by_ann(), ["rolled back", "t3", "t5"])
            raise RuntimeError("roll back")
        self.assertEqual(caches["default"].get(key), generation)
        with self.assertNumQueries(0):
            self.assertEqual(self.by_ann(), ["t1", "t3", "t5"])
        # A new transaction with the same atomic() object does not see the old one's entries.
        block = transaction.atomic()
        with block:
            Book.objects.filter(title="t3").update(title="first")
            self.assertEqual(self.by_ann(), ["t1", "first", "t5"])
            transaction.set_rollback(True)
        with block:
            Book.objects.filter(title="t5").update(title="second")
            self.assertEqual(self.by_ann(), ["t1", "t3", "second"])

    def test_a_rolled_back_savepoint_is_not_read_back(self):
        with transaction.atomic():
            Book.objects.filter(title="t1").update(title="outer")
            try:
                with transaction.atomic():
                    Book.objects.filter(title="t3").update(title="inner")
                    self.assertEqual(self.by_ann(), ["outer", "inner", "t5"])
                    raise ValueError
            except ValueError:
                pass
            self.assertEqual(self.by_ann(), ["outer", "t3", "t5"])
        self.assertEqual(self.by_ann(), ["outer", "t3", "t5"])

    def test_on_commit_callbacks_see_the_new_rows(self):
        self.assertCached(self.by_ann)
        seen = []
        with transaction.atomic():
            transaction.on_commit(lambda: seen.append(self.by_ann()))
            Book.objects.filter(title="t1").update(title="committed")
        self.assertEqual(seen, [["committed", "t3", "t5"]])

    def test_reads_in_a_transaction_that_wrote_nothing_are_shared(self):
        with transaction.atomic():
            self.by_ann()
        with self.assertNumQueries(0):
            self.by_ann()


class DatabaseTests(CacheTestCase):
    def test_results_are_per_database(self):
        other_author = Author.objects.using("other").create(name="ann")
        Book.objects.using("other").create(title="elsewhere", author=other_author)
        self.assertCached(
            lambda: titles(Book.objects.using("other").filter(author__name="ann")), ["elsewhere"], using="other"
        )
        self.assertCached(lambda: titles(Book.objects.filter(author__name="ann")), ["t1", "t3", "t5"])
        obj = Book.objects.using("other").get(title="elsewhere")
        self.assertEqual(obj._state.db, "other")

    def test_a_write_on_one_alias_invalidates_the_table_everywhere(self):
        def replica():
            return titles(Book.objects.using("replica").filter(author=self.ann.pk))

        self.assertCached(replica, ["t1", "t3", "t5"], using="replica")
        Book.objects.using("default").filter(title="t1").update(title="primary")
        self.assertQueried(replica, ["primary", "t3", "t5"], using="replica")


class CacheDownTests(CacheTestCase):
    def test_a_dead_cache_degrades_to_the_database(self):
        from tests.servers import free_port

        dead = {"BACKEND": "django_rustcache.memcached.MemcachedCache", "LOCATION": f"127.0.0.1:{free_port()}"}
        self.assertCached(lambda: titles(Book.objects.filter(author=self.ann)))
        with override_settings(CACHES={"default": dead}), self.assertLogs("django_rustcache.orm", logging.WARNING):
            base._engine._last_warning[0] = 0.0
            with self.assertNumQueries(2):
                self.assertEqual(titles(Book.objects.filter(author=self.ann)), ["t1", "t3", "t5"])
                self.assertEqual(titles(Book.objects.filter(author=self.ann)), ["t1", "t3", "t5"])
            Book.objects.filter(title="t1").update(title="while down")
            self.assertEqual(Book.objects.filter(author=self.ann).count(), 3)
        # Back up: the write made while it was down is delivered before anything is served.
        self.assertQueried(lambda: titles(Book.objects.filter(author=self.ann)), ["while down", "t3", "t5"])


class FlushListTests(CacheTestCase):
    def test_concurrent_appends_are_not_lost(self):
        inv = invalidation.Invalidator()
        key = invalidation.flush_key("o:shared:1")
        barrier = threading.Barrier(4)

        def add(n):
            barrier.wait()
            for i in range(10):
                inv.add_to_flush_list({key: [f"m{n}-{i}"]})

        threads = [threading.Thread(target=add, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(len(inv.get_flush_lists([key])), 40)

    @override_settings(CACHE_MACHINE_FLUSH_LIST_LIMIT=3)
    def test_a_full_list_invalidates_its_model_instead(self):
        inv = invalidation.Invalidator()
        key = invalidation.flush_key("o:testapp.book:1")
        caches["default"].set("entry", 1)
        inv.add_to_flush_list({key: ["a", "b", "entry"]})
        self.assertEqual(inv.get_flush_lists([key]), {"a", "b", "entry"})
        self.assertCached(lambda: titles(Book.objects.filter(author=self.ann)))
        inv.add_to_flush_list({key: ["d"]}, tables={key: frozenset({Book._meta.db_table})})
        self.assertEqual(inv.get_flush_lists([key]), set())
        self.assertQueried(lambda: titles(Book.objects.filter(author=self.ann)), ["t1", "t3", "t5"])
        # Without known tables, the entries it named are dropped.
        inv.add_to_flush_list({key: ["a", "b", "entry"]})
        inv.add_to_flush_list({key: ["d"]})
        self.assertIsNone(caches["default"].get("entry"))

    def test_a_list_lives_as_long_as_its_longest_entry(self):
        inv = invalidation.Invalidator()
        key = invalidation.flush_key("o:ttl:1")
        inv.add_to_flush_list({key: ["forever"]}, timeout=None)
        inv.add_to_flush_list({key: ["short"]}, timeout=1)
        self.assertEqual(caches["default"].get(key + ":ttl"), "never")


class CompatModeTests(CacheTestCase):
    @override_settings(CACHE_MACHINE_COMPAT=True)
    def test_cache_machine_rule_for_new_rows(self):
        def authors():
            return [a.name for a in Author.objects.all()]

        self.assertCached(authors)
        Author.objects.create(name="cy")
        # As Cache Machine: a new row does not invalidate the lists it would join...
        self.assertCached(authors, ["ann", "bob"])
        # ...but any other write path does, and so does whole-model.
        Author.objects.filter(name="cy").update(name="cyd")
        self.assertQueried(authors, ["ann", "bob", "cyd"])
        with override_settings(CACHE_INVALIDATE_ON_CREATE="whole-model"):
            Author.objects.create(name="dee")
            self.assertQueried(authors, ["ann", "bob", "cyd", "dee"])
        # And Cache Machine's flush lists: a new book of ann's drops the lists ann is in.
        self.assertCached(lambda: titles(Book.objects.filter(author=self.ann)))
        Book.objects.create(title="new", author=self.ann)
        self.assertQueried(lambda: titles(Book.objects.filter(author=self.ann)), ["t1", "t3", "t5", "new"])

    def test_the_native_api_invalidates_on_create(self):
        self.assertFalse(config.CACHE_MACHINE_COMPAT)
        self.assertCached(lambda: titles(Book.objects.filter(author=self.ann)))
        Book.objects.create(title="new", author=self.ann)
        self.assertQueried(lambda: titles(Book.objects.filter(author=self.ann)), ["t1", "t3", "t5", "new"])

    def test_bad_setting_is_reported(self):
        with override_settings(CACHE_INVALIDATE_ON_CREATE="sometimes"), self.assertRaises(ImproperlyConfigured):
            config.check()


class TemplateTests(CacheTestCase):
    def test_django_template_tag(self):
        template = Template(
            "{% load rustcache_orm %}{% ormcache books timeout=30 extra=suffix %}"
            "{% for b in books %}{{ b.title }};{% endfor %}{{ suffix }}{% endormcache %}"
        )

        def render(suffix="."):
            return template.render(Context({"books": Book.objects.filter(author=self.ann), "suffix": suffix}))

        self.assertEqual(render(), "t1;t3;t5;.")
        with self.assertNumQueries(0):
            self.assertEqual(render(), "t1;t3;t5;.")
        self.assertEqual(render("!"), "t1;t3;t5;!")
        Book.objects.filter(title="t1").update(title="x")
        self.assertEqual(render(), "x;t3;t5;.")

    def test_jinja2_extension(self):
        import jinja2

        env = jinja2.Environment(extensions=["django_rustcache.orm.ext.cache"])
        t = env.from_string("{% cache obj, 30 %}{{ obj.title }}{% endcache %}")
        book = Book.objects.get(pk=self.books[0].pk)
        self.assertEqual(t.render(obj=book), "t0")
        book.title = "new"
        book.save()
        self.assertEqual(t.render(obj=book), "new")


class InTestCaseTests(TestCase):
    """Inside Django's TestCase (one transaction, never committed): cached reads still work, and
    nothing a test wrote is left in the shared cache for the next one."""

    databases = "__all__"

    @classmethod
    def setUpTestData(cls):
        cls.ann = Author.objects.create(name="ann")
        Book.objects.create(title="one", author=cls.ann)

    def test_hits_inside_a_test(self):
        titles(Book.objects.all())
        with self.assertNumQueries(0):
            self.assertEqual(titles(Book.objects.all()), ["one"])

    def test_writes_are_seen(self):
        Book.objects.create(title="two", author=self.ann)
        self.assertEqual(titles(Book.objects.all()), ["one", "two"])

    def test_zz_a_previous_tests_write_is_gone(self):
        self.assertEqual(titles(Book.objects.all()), ["one"])


class StatsTests(CacheTestCase):
    """``django_rustcache.orm.stats``: reads, stores, writes by path and invalidations, counted
    by value after a known sequence; and in the Prometheus exposition."""

    def test_a_known_sequence_is_counted(self):
        from django_rustcache.orm import stats

        stats.reset_stats()
        titles(Book.objects.filter(author=self.ann))  # a miss, stored
        titles(Book.objects.filter(author=self.ann))  # a hit
        Book.objects.filter(pk=self.books[0].pk).update(title="new")  # an update: one table
        titles(Book.objects.filter(author=self.ann))  # a miss again (new generation), stored
        Tag.objects.create(label="blue")  # an insert
        Tag.objects.filter(label="blue").delete()  # (a read of what to delete, then a delete)
        s = stats.stats()
        self.assertEqual(s["alias"], "default")
        self.assertEqual(s["reads"]["hit"], 1)
        self.assertGreaterEqual(s["reads"]["miss"], 2)
        self.assertEqual(s["reads"]["bypass"], 0)
        self.assertGreaterEqual(s["stores"], 2)
        self.assertEqual(s["writes"]["update"], 1)
        self.assertEqual(s["writes"]["insert"], 1)
        self.assertGreaterEqual(s["writes"]["delete"], 1)
        self.assertGreaterEqual(s["invalidations"], 3)
        self.assertEqual(s["invalidation_failures"], 0)
        stats.reset_stats()
        self.assertEqual(stats.stats()["reads"], {"hit": 0, "miss": 0, "bypass": 0})

    def test_the_counts_are_in_the_prometheus_exposition(self):
        try:
            import prometheus_client
            from prometheus_client.parser import text_string_to_metric_families
        except ImportError:
            self.skipTest("prometheus_client is not installed")
        from django_rustcache import prometheus
        from django_rustcache.orm import stats

        prometheus.register()
        stats.reset_stats()
        titles(Book.objects.filter(author=self.bob))
        titles(Book.objects.filter(author=self.bob))
        text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
        reads = {
            s.labels["result"]: s.value
            for f in text_string_to_metric_families(text)
            if f.name == "django_rustcache_orm_reads"
            for s in f.samples
        }
        self.assertEqual(reads["hit"], 1)
        self.assertGreaterEqual(reads["miss"], 1)
