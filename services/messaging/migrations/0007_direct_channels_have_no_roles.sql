-- Direct channels have no roles (issue 16): both members are equal. The creator of a
-- direct channel used to be its owner, which let them delete the other's messages and
-- remove them.
UPDATE members m SET role = 'member'
FROM channels c
WHERE c.id = m.channel_id AND c.kind = 'direct' AND m.role <> 'member';
