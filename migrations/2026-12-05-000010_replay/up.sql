-- haoka-sync replay judges stored callback requests again on an operator's
-- command, not only unverified ones after GetOrderInfo; a later replay of a
-- request it already applied finds it a duplicate and keeps the link to the
-- event. Column comments only: no data or structure changes.
COMMENT ON COLUMN inbound_callbacks.replayed_at IS 'When the stored request was last judged again (an unverified one after GetOrderInfo learned the vendor number, or any by haoka-sync replay); the original outcome is kept.';
COMMENT ON COLUMN inbound_callbacks.replay_event_id IS 'The order_events row a re-judgement produced, if any; kept when a later one finds the request a duplicate.';
