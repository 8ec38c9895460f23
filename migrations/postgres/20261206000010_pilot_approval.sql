-- A new pilot waits for an admin's approval before it may go on duty; an admin can suspend
-- it again. Pilots who were already working when this arrived stay approved; new rows are
-- inserted pending. vehicle_number (the plate) and vehicle_model are recorded at approval.
ALTER TABLE pilots ADD COLUMN approval text NOT NULL DEFAULT 'approved'
    CHECK (approval IN ('pending', 'approved', 'suspended'));
ALTER TABLE pilots ALTER COLUMN approval SET DEFAULT 'pending';
ALTER TABLE pilots ADD COLUMN vehicle_model text;
ALTER TABLE pilots ADD COLUMN approval_changed_at timestamptz;
ALTER TABLE pilots ADD COLUMN approval_changed_by uuid REFERENCES users (id);
-- Admins listing who waits (or who is suspended), newest first.
CREATE INDEX pilots_approval_idx ON pilots (approval, user_id DESC) WHERE approval <> 'approved';
