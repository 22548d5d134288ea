-- Channel metadata (issue 16): a one-line topic and a description. Constant defaults, so
-- adding the columns rewrites nothing (Postgres 11+).
ALTER TABLE channels
    ADD COLUMN topic       text NOT NULL DEFAULT '',
    ADD COLUMN description text NOT NULL DEFAULT '';
