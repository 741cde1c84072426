-- The Redshift side of the warehouse. Firehose COPYs newline-delimited JSON objects (the columns of
-- the embedded `sales` table, see src/store/warehouse/mod.rs) into `sales_staging`; Firehose
-- delivers at least once, so a scheduled query merges the staging rows into `sales` by line_id,
-- which makes the load idempotent like every other sink.
--
-- Sums: add up line_total (DECIMAL(24, 6); Redshift's SUM of it is DECIMAL(38, 6)), not
-- line_total_micros (BIGINT; its SUM is a BIGINT, which ten lines at shopstream's validation
-- bounds, 10^18 millionths each, overflow). The bounds keep unit_price and line_total inside
-- their types: at most 10^6 and 10^12 pounds.

CREATE TABLE IF NOT EXISTS sales_staging (
    line_id            CHAR(32)       NOT NULL,
    invoice_no         VARCHAR(20)    NOT NULL,
    stock_code         VARCHAR(64)    NOT NULL,
    description        VARCHAR(1024),
    quantity           BIGINT         NOT NULL,
    invoice_date       TIMESTAMP      NOT NULL,
    unit_price         DECIMAL(18, 6) NOT NULL,
    line_total         DECIMAL(24, 6) NOT NULL,
    line_total_micros  BIGINT         NOT NULL,
    customer_id        BIGINT,
    country            VARCHAR(128)   NOT NULL,
    is_cancellation    BOOLEAN        NOT NULL,
    store_id           VARCHAR(64)    NOT NULL,
    ingested_at        TIMESTAMP      NOT NULL,
    source             VARCHAR(300)   NOT NULL
);

CREATE TABLE IF NOT EXISTS sales (LIKE sales_staging)
    DISTKEY (invoice_no) SORTKEY (invoice_date);

-- Run every few minutes (Redshift scheduled query): new lines in, duplicates out, staging emptied.
-- A line id is written once, first version kept (docs/line-identity.md, rule 7): a line already in
-- `sales` is left alone, and of several staging rows of one new line id the first ingested wins.
-- Copies of one line (Firehose redelivers; a resent request) carry their own ingested_at, so the
-- merge ranks by line_id alone, not SELECT DISTINCT.
BEGIN;
LOCK sales_staging;
INSERT INTO sales
SELECT line_id, invoice_no, stock_code, description, quantity, invoice_date, unit_price,
       line_total, line_total_micros, customer_id, country, is_cancellation, store_id,
       ingested_at, source
FROM (
    SELECT s.*, ROW_NUMBER() OVER (PARTITION BY s.line_id ORDER BY s.ingested_at, s.source) AS nth
    FROM sales_staging s
    LEFT JOIN sales t ON t.line_id = s.line_id
    WHERE t.line_id IS NULL
) first_versions
WHERE nth = 1;
DELETE FROM sales_staging;
COMMIT;
