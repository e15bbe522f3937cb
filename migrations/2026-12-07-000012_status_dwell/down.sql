DROP VIEW status_dwell;
DROP TABLE status_dwell_stats;
