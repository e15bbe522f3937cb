// @generated automatically by Diesel CLI.

diesel::table! {
    callback_confirmations (id) {
        id -> Int8,
        vendor -> Text,
        order_id -> Text,
        reason -> Text,
        request_id -> Text,
        claimed_status -> Text,
        claimed_vendor_order_no -> Nullable<Text>,
        event_id -> Nullable<Int8>,
        requested_at -> Timestamptz,
        expedited -> Bool,
        resolved_at -> Nullable<Timestamptz>,
        result -> Nullable<Text>,
        vendor_status -> Nullable<Text>,
    }
}

diesel::table! {
    callback_gaps (id) {
        id -> Int8,
        vendor -> Text,
        silent_since -> Timestamptz,
        resumed_at -> Nullable<Timestamptz>,
        detected_at -> Timestamptz,
        expected_callbacks -> Int4,
        swept_at -> Nullable<Timestamptz>,
        swept_orders -> Int8,
        closed_at -> Nullable<Timestamptz>,
        sweep_started_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    callback_watch (vendor) {
        vendor -> Text,
        heard_until -> Timestamptz,
        checked_at -> Timestamptz,
    }
}

diesel::table! {
    forward_attempts (id) {
        id -> Int8,
        delivery_id -> Int8,
        at -> Timestamptz,
        worker -> Text,
        http_status -> Nullable<Int4>,
        latency_ms -> Int4,
        error -> Nullable<Text>,
        response_sample -> Nullable<Text>,
        redelivery -> Bool,
    }
}

diesel::table! {
    forward_deliveries (id) {
        id -> Int8,
        target_id -> Int8,
        change_id -> Int8,
        vendor -> Text,
        order_id -> Text,
        seq -> Int8,
        webhook_id -> Text,
        payload -> Nullable<Jsonb>,
        state -> Text,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        retry_from -> Timestamptz,
        redeliveries -> Int4,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        last_attempt_at -> Nullable<Timestamptz>,
        last_status -> Nullable<Int4>,
        last_error -> Nullable<Text>,
        delivered_at -> Nullable<Timestamptz>,
        order_status -> Nullable<Text>,
        vendor_status -> Nullable<Text>,
        vendor_order_no -> Nullable<Text>,
        express_name -> Nullable<Text>,
        express_code -> Nullable<Text>,
        third_phone_masked -> Nullable<Text>,
        iccid -> Nullable<Text>,
        card_status -> Nullable<Text>,
        activated_at -> Nullable<Timestamptz>,
        first_charge -> Nullable<Bool>,
        first_charge_amount -> Nullable<Text>,
        remark -> Nullable<Text>,
    }
}

diesel::table! {
    forward_targets (id) {
        id -> Int8,
        name -> Text,
        url -> Text,
        vendor -> Nullable<Text>,
        statuses -> Nullable<Array<Nullable<Text>>>,
        secret -> Text,
        previous_secret -> Nullable<Text>,
        previous_until -> Nullable<Timestamptz>,
        enabled -> Bool,
        failing_since -> Nullable<Timestamptz>,
        marked_failing_at -> Nullable<Timestamptz>,
        probe_after -> Nullable<Timestamptz>,
        last_success_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    inbound_callbacks (id, received_at) {
        id -> Int8,
        vendor -> Text,
        received_at -> Timestamptz,
        outcome -> Text,
        error -> Nullable<Text>,
        request_id -> Nullable<Text>,
        order_id -> Nullable<Text>,
        event_id -> Nullable<Int8>,
        sign_matched -> Nullable<Text>,
        content_type -> Nullable<Text>,
        remote_addr -> Nullable<Text>,
        headers -> Jsonb,
        body -> Text,
        body_raw -> Nullable<Bytea>,
        body_size -> Int4,
        body_truncated -> Bool,
        source_addr -> Nullable<Text>,
        replayed_at -> Nullable<Timestamptz>,
        replay_outcome -> Nullable<Text>,
        replay_event_id -> Nullable<Int8>,
    }
}

diesel::table! {
    order_change_log (id) {
        id -> Int8,
        event_id -> Int8,
        vendor -> Text,
        order_id -> Text,
        from_status -> Text,
        to_status -> Text,
        source -> Text,
        at -> Timestamptz,
        order_seq -> Int8,
    }
}

diesel::table! {
    order_count_deltas (id) {
        id -> Int8,
        vendor -> Text,
        status -> Text,
        delta -> Int8,
    }
}

diesel::table! {
    order_counts (vendor, status) {
        vendor -> Text,
        status -> Text,
        orders -> Int8,
    }
}

diesel::table! {
    order_events (id) {
        id -> Int8,
        vendor -> Text,
        order_id -> Text,
        source -> Text,
        status -> Text,
        vendor_status -> Nullable<Text>,
        applied -> Bool,
        effect -> Text,
        request_id -> Nullable<Text>,
        observed -> Jsonb,
        received_at -> Timestamptz,
    }
}

diesel::table! {
    order_link_overrides (haoka172_order_id, damaijia_order_sn) {
        haoka172_order_id -> Text,
        damaijia_order_sn -> Text,
        note -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    order_polls (vendor, order_id) {
        vendor -> Text,
        order_id -> Text,
        next_check_at -> Nullable<Timestamptz>,
        quiet_polls -> Int4,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<Timestamptz>,
        calls_day -> Nullable<Date>,
        calls_today -> Int4,
        last_poll_outcome -> Nullable<Text>,
        tracking_expired_at -> Nullable<Timestamptz>,
        tracked_at -> Timestamptz,
        last_polled_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    orders (vendor, order_id) {
        vendor -> Text,
        order_id -> Text,
        status -> Text,
        vendor_status -> Nullable<Text>,
        is_terminal -> Bool,
        vendor_order_no -> Nullable<Text>,
        express_name -> Nullable<Text>,
        express_code -> Nullable<Text>,
        third_phone -> Nullable<Text>,
        iccid -> Nullable<Text>,
        card_status -> Nullable<Text>,
        activated_at -> Nullable<Timestamptz>,
        first_charge -> Nullable<Bool>,
        first_charge_amount -> Nullable<Text>,
        remark -> Nullable<Text>,
        details -> Jsonb,
        conflict -> Bool,
        unknown_vendor_status -> Nullable<Text>,
        last_source -> Nullable<Text>,
        last_heard_at -> Nullable<Timestamptz>,
        status_changed_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    retention_runs (id) {
        id -> Int8,
        started_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
        owner -> Text,
        trigger -> Text,
        dry_run -> Bool,
        retention -> Text,
        removed -> Jsonb,
        error -> Nullable<Text>,
    }
}

diesel::table! {
    schedule_settings (vendor) {
        vendor -> Text,
        settings -> Jsonb,
        recorded_at -> Timestamptz,
        rescheduling_to -> Nullable<Jsonb>,
        reschedule_started_at -> Nullable<Timestamptz>,
        resume_after -> Nullable<Text>,
        walked -> Int8,
        moved -> Int8,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    status_dwell_stats (vendor, status) {
        vendor -> Text,
        status -> Text,
        stays -> Int8,
        finished -> Int8,
        still_open -> Int8,
        p50_secs -> Nullable<Int8>,
        p90_secs -> Nullable<Int8>,
        p99_secs -> Nullable<Int8>,
        overdue_secs -> Nullable<Int8>,
        outlived_overdue -> Nullable<Float8>,
        since -> Timestamptz,
        refreshed_at -> Timestamptz,
    }
}

diesel::table! {
    vendor_calls (id, called_at) {
        id -> Int8,
        vendor -> Text,
        called_at -> Timestamptz,
        api -> Text,
        order_ids -> Array<Nullable<Text>>,
        caller -> Text,
        outcome -> Text,
        http_status -> Nullable<Int4>,
        duration_ms -> Nullable<Int4>,
        error -> Nullable<Text>,
        cost -> Nullable<Int8>,
    }
}

diesel::table! {
    vendor_pauses (vendor) {
        vendor -> Text,
        paused_until -> Timestamptz,
        reason -> Text,
        paused_at -> Timestamptz,
    }
}

diesel::table! {
    vendor_tokens (vendor) {
        vendor -> Text,
        token -> Nullable<Text>,
        obtained_at -> Nullable<Timestamptz>,
        login_owner -> Nullable<Text>,
        login_lease_until -> Nullable<Timestamptz>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    callback_confirmations,
    callback_gaps,
    callback_watch,
    forward_attempts,
    forward_deliveries,
    forward_targets,
    inbound_callbacks,
    order_change_log,
    order_count_deltas,
    order_counts,
    order_events,
    order_link_overrides,
    order_polls,
    orders,
    retention_runs,
    schedule_settings,
    status_dwell_stats,
    vendor_calls,
    vendor_pauses,
    vendor_tokens,
);
