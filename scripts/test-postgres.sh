#!/usr/bin/env bash
# Makes sure a Postgres answers on 127.0.0.1:5432 and lets role postgres in without a
# password, as the tests expect (tests/common/pgdb.rs, tests/doctor.rs). When one already
# does, nothing happens. When nothing listens there, starts a server of the tests' own:
# initdb --auth=trust in $STALLWATCH_TEST_PG_DIR (default /var/tmp/stallwatch-test-pg,
# outside the repo so user postgres can reach it), listening on 127.0.0.1 only, left
# running for the next run (stop it: pg_ctl -D DIR/data stop). Postgres refuses to run as
# root, so as root the server runs as user postgres (made by Debian's postgresql package).
# Like the Debian cluster the tests were written against, it offers TLS with the machine's
# snakeoil certificate (package ssl-cert, a postgresql dependency; tests/postgres_sources.rs
# expects `SHOW ssl` on), and the user running the tests has a superuser role of the same
# name (a URL without a user, as in tests/doctor.rs, logs in as the OS user).
set -euo pipefail

die() { echo "test-postgres: $*" >&2; exit 1; }
conn="host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"
answers() { psql "$conn" -XqtAc 'SELECT 1' >/dev/null 2>&1; }

command -v psql >/dev/null || die "psql not found (apt-get install postgresql)"
# The OS user's own role, made once on whichever server answers (trust auth lets us).
own_role() {
  local me
  me="$(id -un)"
  [ "$me" = postgres ] && return 0
  if [ "$(psql "$conn" -XqtAc "SELECT count(*) FROM pg_roles WHERE rolname = '$me'")" = 0 ]; then
    psql "$conn" -XqAc "CREATE ROLE \"$me\" SUPERUSER LOGIN" >/dev/null ||
      die "cannot create role $me for the tests"
    echo "test-postgres: created role $me (the tests' URLs without a user log in as it)" >&2
  fi
}
if answers; then
  own_role
  exit 0
fi

bindir="$(pg_config --bindir 2>/dev/null || true)"
[ -x "$bindir/initdb" ] || bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
[ -x "$bindir/initdb" ] || die "no initdb (apt-get install postgresql)"

set +e
"$bindir/pg_isready" -q -h 127.0.0.1 -p 5432 -t 5
ready=$?
set -e
if [ "$ready" -ne 2 ]; then
  die "a Postgres on 127.0.0.1:5432 does not let role postgres in without a password; the tests need trust auth there (pg_hba.conf: host all postgres 127.0.0.1/32 trust), or the port free so this script can start a server of their own"
fi

dir="${STALLWATCH_TEST_PG_DIR:-/var/tmp/stallwatch-test-pg}"
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || die "no user postgres to run the server as (apt-get install postgresql)"
  as_pg=(runuser -u postgres --)
else
  as_pg=()
fi
mkdir -p "$dir"
[ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
if [ ! -f "$dir/data/PG_VERSION" ]; then
  echo "test-postgres: initdb in $dir/data" >&2
  rm -rf "$dir/data"
  "${as_pg[@]}" "$bindir/initdb" -D "$dir/data" --auth=trust -U postgres -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
    die "initdb failed, see $dir/initdb.log"
fi
tls=""
snakeoil_cert=/etc/ssl/certs/ssl-cert-snakeoil.pem
snakeoil_key=/etc/ssl/private/ssl-cert-snakeoil.key
if [ -f "$snakeoil_cert" ] && "${as_pg[@]}" test -r "$snakeoil_key"; then
  tls="-c ssl=on -c ssl_cert_file=$snakeoil_cert -c ssl_key_file=$snakeoil_key"
else
  die "no snakeoil certificate readable by the server ($snakeoil_key; apt-get install ssl-cert, and user postgres in group ssl-cert)"
fi
echo "test-postgres: starting the tests' Postgres on 127.0.0.1:5432 ($dir/data)" >&2
"${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
  -o "-p 5432 -c listen_addresses=127.0.0.1 -k $dir -c fsync=off $tls" start >/dev/null ||
  die "pg_ctl start failed, see $dir/server.log"
answers || die "the server started in $dir/data does not let role postgres in; see $dir/server.log"
own_role
