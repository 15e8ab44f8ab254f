#!/bin/sh
# Run once by the postgres image when its data volume is created (/docker-entrypoint-initdb.d):
# the services' role, with the password from the secret postgres_app_password. It owns nothing;
# `cxrtriage db upgrade` (compose service migrate, as the owner POSTGRES_USER) grants it the
# services' privileges after each migration (docs/database-roles.md).
set -eu
password="$(cat /run/secrets/postgres_app_password)"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -v password="$password" <<'SQL'
CREATE ROLE cxrtriage_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'password';
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SQL
