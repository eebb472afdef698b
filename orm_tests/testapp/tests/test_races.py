"""Races, forced and random: no read that starts after a write has returned sees the old row.

Each forced interleaving is also run against a deliberately broken variant (generations read
after the SQL; a write published before its commit) to show the test catches that bug.
"""

import random
import threading
import time
from contextlib import contextmanager, nullcontext
from unittest import mock

from django.core.cache import caches
from django.db import connections, transaction
from django.test import TransactionTestCase

from django_rustcache.orm import _cache, _engine, base
from orm_tests.testapp.models import Author, Book

_pause = threading.local()


def after_sql():
    """Where a forced interleaving holds the reader: its rows are read, nothing is stored yet."""
    hook = getattr(_pause, "hook", None)
    if hook is not None:
        hook()


def pausing_store(read, stamp, payload, present, rows=None):
    """Our store, held where a forced interleaving wants the reader: rows read, none stored."""
    after_sql()
    return _real_store(read, stamp, payload, present, rows)


_real_store = _cache._store


@contextmanager
def stamp_after_sql(delay=0.0):
    """Broken on purpose: the generations a result is stored with are read after the SQL ran
    (cachalot's race), not before."""

    def store(read, stamp, payload, present, rows=None):
        after_sql()
        time.sleep(delay)
        _, stamp, _ = _cache._stamp(base.cache, read.db, read.tables, None)
        return _real_store(read, stamp, payload, present, rows)

    with mock.patch.object(_cache, "_store", store):
        yield


@contextmanager
def publish_before_commit():
    """Broken on purpose: a write inside atomic() gets new generations at once, not at commit."""

    def wrote(conn, tables):
        _engine.bump(frozenset(tables) or _engine.known_tables())

    with mock.patch.object(_engine, "wrote", wrote):
        yield


def in_thread(target):
    out, errors = [], []

    def run():
        try:
            out.append(target())
        except BaseException as exc:  # surfaced in the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    t = threading.Thread(target=run)
    t.start()
    return t, out, errors


class RaceTestCase(TransactionTestCase):
    databases = "__all__"

    def setUp(self):
        caches["default"].clear()
        self.author = Author.objects.create(name="ann")
        self.book = Book.objects.create(title="old", author=self.author)

    def title(self):
        return Book.objects.filter(pk=self.book.pk)[0].title

    def pausing(self, reached, resume):
        """For the reader: once its query's rows are read, say so and wait to be resumed."""

        def hook():
            _pause.hook = None
            reached.set()
            self.assertTrue(resume.wait(10))

        return hook


class ForcedInterleavings(RaceTestCase):
    def reader_stalls_after_its_select(self, write):
        """Reader: generations, SQL (old row) | writer: write, return | reader: store. Then a
        read that starts after the write returned."""
        reached, resume = threading.Event(), threading.Event()

        def reader():
            _pause.hook = self.pausing(reached, resume)
            with mock.patch.object(_cache, "_store", pausing_store) if self.ours else nullcontext():
                return self.title()

        t, out, errors = in_thread(reader)
        self.assertTrue(reached.wait(10))
        write()
        resume.set()
        t.join()
        self.assertEqual(errors, [])
        self.assertEqual(out, ["old"])  # the race happened: the reader's SQL saw the old row
        return self.title()

    def save(self):
        self.book.title = "new"
        self.book.save()

    def update(self):
        Book.objects.filter(pk=self.book.pk).update(title="new")

    ours = True

    def test_a_reader_that_stores_after_the_write_does_not_serve_it(self):
        # Cache Machine's documented race: its invalidation ran before the reader stored.
        self.assertEqual(self.reader_stalls_after_its_select(self.save), "new")

    def test_same_with_update(self):
        self.assertEqual(self.reader_stalls_after_its_select(self.update), "new")

    def test_the_broken_variant_serves_the_old_row(self):
        self.ours = False
        with stamp_after_sql():
            self.assertEqual(self.reader_stalls_after_its_select(self.update), "old")

    def reader_between_write_and_commit(self):
        """Writer: atomic(), UPDATE | reader: read (old row, uncommitted), store | writer: commit,
        return. Then a read."""
        updated, committed = threading.Event(), threading.Event()

        def writer():
            with transaction.atomic():
                Book.objects.filter(pk=self.book.pk).update(title="new")
                updated.set()
                self.assertTrue(committed.wait(10))

        t, _, errors = in_thread(writer)
        self.assertTrue(updated.wait(10))
        self.assertEqual(self.title(), "old")  # not committed yet
        committed.set()
        t.join()
        self.assertEqual(errors, [])
        return self.title()

    def test_a_write_is_published_after_its_commit(self):
        self.assertEqual(self.reader_between_write_and_commit(), "new")

    def test_the_broken_variant_publishes_before_the_commit(self):
        with publish_before_commit():
            self.assertEqual(self.reader_between_write_and_commit(), "old")


class RandomReadersAndWriter(RaceTestCase):
    """One writer commits version 1, 2, 3... of a row; readers read it through the cache. A read
    that started after version v's write returned must see v or later."""

    def run_checker(self, seconds=2.0, readers=3):
        committed = {}  # version -> when its write returned
        reads = []  # (when the read started, version seen)
        done = threading.Event()
        rng = random.Random(42)

        def writer():
            version = 0
            start = time.monotonic()
            # Readers that hold the GIL can starve the writer on a busy machine: it goes on
            # past `seconds` until it has written enough to test anything (at most 5x longer).
            while (now := time.monotonic()) < start + seconds or (version < 30 and now < start + 5 * seconds):
                version += 1
                if rng.random() < 0.5:
                    Book.objects.filter(pk=self.book.pk).update(pages=version)
                else:
                    with transaction.atomic():
                        Book.objects.filter(pk=self.book.pk).update(pages=version)
                committed[version] = time.monotonic()
                time.sleep(rng.random() * 0.003)
            done.set()
            return version

        def reader():
            while not done.is_set():
                started = time.monotonic()
                reads.append((started, Book.objects.filter(pk=self.book.pk)[0].pages))
                time.sleep(0)  # let the writer in (readers would otherwise hand each other the GIL)

        threads = [in_thread(reader) for _ in range(readers)]
        w = in_thread(writer)
        for t, _, errors in [*threads, w]:
            t.join()
            self.assertEqual(errors, [])
        versions = sorted(committed.items(), key=lambda kv: kv[1])
        stale = 0
        for started, seen in reads:
            newest = max((v for v, at in versions if at < started), default=0)
            stale += seen < newest
        return stale, len(reads), len(committed)

    def test_no_stale_read(self):
        Book.objects.filter(pk=self.book.pk).update(pages=0)
        stale, reads, writes = self.run_checker()
        self.assertGreater(reads, 100)
        self.assertGreater(writes, 10)
        print(f"\n  {reads} reads, {writes} writes, {stale} stale", end=" ")
        self.assertEqual(stale, 0, f"{stale} of {reads} reads saw a row older than a write that had returned")

    def test_the_checker_catches_the_broken_variant(self):
        Book.objects.filter(pk=self.book.pk).update(pages=0)
        # The race is timing-bound: a quiet run can miss it; each retry is another chance.
        with stamp_after_sql(delay=0.002):
            for _ in range(8):
                stale, reads, _ = self.run_checker()
                if stale:
                    break
        self.assertGreater(stale, 0, f"the checker missed the broken variant in {reads} reads")
