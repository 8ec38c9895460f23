-- A new pilot waits for an admin's approval before it may go on duty; an admin can suspend
-- it again. Pilots who were already working when this arrived stay approved. SQLite cannot
-- change a column's default afterwards: the server always names the approval of a new row
-- (pending). vehicle_number (the plate) and vehicle_model are recorded at approval.
ALTER TABLE pilots ADD COLUMN approval TEXT NOT NULL DEFAULT 'approved'
    CHECK (approval IN ('pending', 'approved', 'suspended'));
ALTER TABLE pilots ADD COLUMN vehicle_model TEXT;
ALTER TABLE pilots ADD COLUMN approval_changed_at TEXT;
ALTER TABLE pilots ADD COLUMN approval_changed_by BLOB REFERENCES users (id);
CREATE INDEX pilots_approval_idx ON pilots (approval, user_id DESC) WHERE approval <> 'approved';
