#!/bin/sh
# First start of the local stack's Postgres: the mana_sync side (the sync
# server's sync_changes table, as the fixture has it), the service role, and
# the DBA kit installed for it, exactly as a DBA would with psql -f.
set -eu
psql -v ON_ERROR_STOP=1 -d mana_sync -f /kit/mana_sync.sql
psql -v ON_ERROR_STOP=1 -d mana_sync \
  -c "CREATE ROLE mana_ai LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '${MANA_AI_DB_PASSWORD}'"
psql -v ON_ERROR_STOP=1 -v service_role=mana_ai -d mana_sync -f /kit/install.sql
psql -v ON_ERROR_STOP=1 -v service_role=mana_ai -d mana_sync -f /kit/verify.sql
