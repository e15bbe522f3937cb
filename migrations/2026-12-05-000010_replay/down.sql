COMMENT ON COLUMN inbound_callbacks.replayed_at IS 'When the stored request was judged again (an unverified one after GetOrderInfo learned the vendor number); the original outcome is kept.';
COMMENT ON COLUMN inbound_callbacks.replay_event_id IS 'The order_events row the re-judgement produced, if any.';
