package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
)

// A synced commit is one fsync of its pages and its meta page together
// (execute). A power cut during that fsync can leave the new meta page on
// disk without every page it points to: the newest tree is damaged, and
// the tree of the other meta page, one commit older, is whole, because a
// commit never writes a page of the tree before it. The cut commit was
// never answered (its fsync had not returned), so Open returns to the
// commit before it instead of salvaging: the file keeps its dedupe index,
// its local state and its counts, and nothing comes back that was acked.
//
// The same shape can also be damage to pages of the last commit after it
// was answered (a bit flip, a lying disk). So that no acknowledged message
// is lost even then, the new messages of the newer tree that are intact
// are stored again after the rollback (Open, rescue), as new messages at
// the end of their lanes: after a real cut some of them may come twice,
// once from here and once from the device that never got its
// acknowledgement and sends again (at-least-once).

// errNotTorn: the damage is not that of one cut commit.
var errNotTorn = errors.New("not a cut commit")

// rollBackCutCommit makes the file at path open at its older meta page
// when the newest tree fails the check (cause) and the older, exactly one
// commit before it, passes every check. It writes a copy of the older
// meta page over the newer and fsyncs: bbolt then opens the older state,
// whose freelist it rebuilds (the pages of the cut commit are free), and
// the next commit overwrites the copy. It returns the older transaction
// id and the intact queued messages of the newer tree that the older does
// not have, in id order; errNotTorn (wrapped) when the file is not in that
// state, leaving it untouched. The caller holds the file's lock.
func rollBackCutCommit(path string, cause error) (uint64, []Entry, error) {
	b, err := openBoltFile(path)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: %w", errNotTorn, err)
	}
	defer b.close()
	cur, o := b.cur, b.other()
	if o < 0 || b.metas[o].txid+1 != b.metas[cur].txid {
		return 0, nil, fmt.Errorf("%w: no meta page one commit older", errNotTorn)
	}
	c, err := checkedTreeOf(path, b, &b.metas[o])
	if err != nil {
		return 0, nil, fmt.Errorf("%w: the older tree is damaged too: %w", errNotTorn, err)
	}
	var ids []uint64
	found := map[uint64]record{}
	_, _, _, _ = b.walkContents(&b.metas[cur], true, func(id uint64, r record) {
		if r.kind == kindQueued && id >= c.nextID {
			if _, dup := found[id]; !dup {
				ids = append(ids, id)
			}
			found[id] = r
		}
	})
	slices.Sort(ids)
	rescue := make([]Entry, 0, len(ids))
	for _, id := range ids {
		r := found[id]
		e := Entry{Priority: r.priority, Data: r.data}
		if r.expires != 0 {
			e.ExpiresAt = time.Unix(0, r.expires)
		}
		rescue = append(rescue, e)
	}
	older, err := b.read(int64(o)*b.psize, b.psize)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: %w", errNotTorn, err)
	}
	page := append([]byte(nil), older...)
	binary.LittleEndian.PutUint64(page, uint64(cur)) // the page header's id: the slot it goes to
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return 0, nil, err
	}
	_, err = f.WriteAt(page, int64(cur)*b.psize)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, nil, fmt.Errorf("spool: roll back the cut commit of %s: %w (cause: %w)", path, err, cause)
	}
	return b.metas[o].txid, rescue, nil
}
