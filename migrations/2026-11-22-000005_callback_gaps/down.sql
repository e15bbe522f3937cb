DROP TABLE callback_watch;
DROP TABLE callback_gaps;
