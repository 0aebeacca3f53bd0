# -*- coding: utf-8 -*-
# Copyright: keelson.stack developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL client side of backups: connection settings passed through the
environment and a private password file (never argv), a psql session that can
hold an exported snapshot, row counts and table-of-contents hashes."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import pwd
import queue
import re
import shutil
import subprocess
import tempfile
import threading

from ansible_collections.keelson.stack.plugins.module_utils.backup_local import kill_and_reap
from ansible_collections.keelson.stack.plugins.module_utils.backup_retry import RunStopped

END_MARKER = "__KEELSON_END_OF_RESULT__"

# Every ordinary table pg_dump dumps data for: leaf tables and partitions,
# not system catalogs, not extension members. Keys are quoted identifiers.
ROW_COUNT_SQL = r"""
SELECT format('SELECT json_build_array(%L, count(*)) FROM ONLY %I.%I',
              format('%I.%I', n.nspname, c.relname), n.nspname, c.relname)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%'
  AND n.nspname NOT LIKE 'pg\_temp\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass
                    AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1
\gexec
"""


class PgError(Exception):
    """A PostgreSQL client tool failed; the message is one line."""


def one_line(text, limit=500):
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return " ".join(lines)[:limit]


class Connection(object):
    """How to reach the server. With no password, tools run as `os_user`
    (peer authentication on the local socket); with one, it is written to a
    PGPASSFILE readable only by the user running the tools."""

    def __init__(self, host=None, port=5432, user="postgres", password=None, os_user="postgres", deadline=None):
        self.deadline = deadline
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.os_user = os_user if os.geteuid() == 0 and os_user else None
        self.private_dir = None

    def __enter__(self):
        self.private_dir = tempfile.mkdtemp(prefix="keelson-backup-")
        if self.os_user:
            entry = pwd.getpwnam(self.os_user)
            os.chown(self.private_dir, entry.pw_uid, entry.pw_gid)
        if self.password is not None:
            path = os.path.join(self.private_dir, "pgpass")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write("*:*:*:*:%s\n" % self.password.replace("\\", "\\\\").replace(":", "\\:"))
            if self.os_user:
                os.chown(path, pwd.getpwnam(self.os_user).pw_uid, -1)
        return self

    def __exit__(self, *exc):
        if self.private_dir:
            shutil.rmtree(self.private_dir, ignore_errors=True)
            self.private_dir = None

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGAPPNAME"] = "keelson-backup"
        env["PGCONNECT_TIMEOUT"] = "10"
        if self.host:
            env["PGHOST"] = self.host
        env["PGPORT"] = str(self.port)
        env["PGUSER"] = self.user
        if self.password is not None:
            env["PGPASSFILE"] = os.path.join(self.private_dir, "pgpass")
        if self.os_user:
            entry = pwd.getpwnam(self.os_user)
            env["HOME"] = entry.pw_dir
            env["USER"] = env["LOGNAME"] = self.os_user
        return env

    def popen_kwargs(self):
        kwargs = {"env": self.env(), "cwd": "/"}
        if self.os_user:
            kwargs["user"] = self.os_user
        return kwargs

    def run(self, argv, input_text=None, check=True):
        """Runs a client tool, returns stdout; raises PgError with stderr on failure.
        With a deadline, a stop (deadline passed, SIGTERM) kills the tool and its
        children (pg_restore -j forks workers) and raises RunStopped."""
        name = os.path.basename(argv[0])
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                                **self.popen_kwargs())
        pending = input_text
        while True:
            try:
                out, err = proc.communicate(pending, timeout=None if self.deadline is None else 0.5)
                break
            except subprocess.TimeoutExpired:
                pending = None  # communicate() keeps sending what it was given first
                reason = self.deadline.stopped()
                if reason:
                    kill_and_reap(proc, group=True)
                    raise RunStopped("%s during %s" % (reason, name))
        if check and proc.returncode != 0:
            raise PgError("%s failed: %s" % (name, one_line(err) or "exit %d" % proc.returncode))
        return out

    def psql(self, database, sql):
        """Runs SQL (ON_ERROR_STOP) and returns the output lines (unaligned, tuples only)."""
        out = self.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", database], input_text=sql)
        return [line for line in out.splitlines() if line]


class PsqlSession(object):
    """A long-lived psql process, for work that must share one transaction
    (an exported snapshot and the row counts taken in it)."""

    def __init__(self, conn, database, deadline=None):
        self.deadline = deadline
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", database],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, **conn.popen_kwargs())
        self.lines = queue.Queue()
        self.reader = threading.Thread(target=self._drain, name="psql-reader")
        self.reader.daemon = True
        self.reader.start()

    def _drain(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, sql):
        """Queues SQL followed by an end marker; collect the result with result()."""
        try:
            self.proc.stdin.write(sql.rstrip() + "\n\\echo " + END_MARKER + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # result() reports psql's own error

    def result(self):
        rows = []
        while True:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.deadline is not None:
                    self.deadline.check("the row counts")
                continue
            if line is None:
                self.proc.wait()
                self.stderr.seek(0)
                detail = one_line(self.stderr.read().decode("utf-8", "replace"))
                raise PgError("psql failed: %s" % (detail or "exit %s" % self.proc.returncode))
            if line == END_MARKER:
                return rows
            if line:
                rows.append(line)

    def query(self, sql):
        self.send(sql)
        return self.result()

    def close(self, patience=30):
        """Ends the session (ROLLBACK, quit); kills psql after `patience` seconds
        (short on a failed run: a count may be stuck behind a lock)."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("ROLLBACK;\n\\q\n")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=patience)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def parse_row_counts(lines):
    counts = {}
    for line in lines:
        name, count = json.loads(line)
        counts[name] = int(count)
    return counts


def toc_entries(listing):
    """The entry lines of `pg_restore -l` output, without the header comments
    (which carry the archive's creation time and file name)."""
    return [line.strip() for line in listing.splitlines() if line.strip() and not line.startswith(";")]


def toc_sha256(listing):
    entries = toc_entries(listing)
    if not entries:
        raise PgError("pg_restore -l listed no table of contents entries")
    return hashlib.sha256("\n".join(entries).encode("utf-8")).hexdigest()


def tool_version(conn, tool):
    """'17.12' from 'pg_dump (PostgreSQL) 17.12 (Debian 17.12-0+deb13u1)'."""
    out = conn.run([tool, "--version"])
    match = re.search(r"(\d+(?:\.\d+)?)", out)
    return match.group(1) if match else out.strip()


def choose_compression(conn, database, method, level, version):
    """(method, pg_dump arguments). 'auto' means zstd when this pg_dump supports
    it (PostgreSQL 16+ built with zstd), gzip otherwise. pg_dump before 16 only
    knows gzip levels (-Z N). `version`: pg_dump's (tool_version)."""
    major = int(version.split(".")[0])
    if method == "auto":
        method = "gzip"
        if major >= 16:
            probe = subprocess.run(["pg_dump", "-Fc", "--compress=zstd:1", "--schema-only", "--no-sync",
                                    "--exclude-schema=*", "-f", os.devnull,
                                    "-d", database], capture_output=True, check=False, **conn.popen_kwargs())
            if probe.returncode == 0:
                method = "zstd"
    if major < 16:
        if method not in ("gzip", "none"):
            raise PgError("pg_dump %d supports only gzip or none compression, not %s" % (major, method))
        return method, ["-Z", "0" if method == "none" else str(6 if level is None else level)]
    if method == "none":
        return method, ["--compress=none"]
    return method, ["--compress=%s" % (method if level is None else "%s:%d" % (method, level))]


def quote_ident(name):
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value):
    return "'" + value.replace("'", "''") + "'"


def database_exists(conn, name):
    return conn.psql("postgres", "SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s;" % quote_literal(name)) == ["1"]
