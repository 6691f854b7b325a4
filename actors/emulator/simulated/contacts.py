"""Contacts app: a scrolling list, a detail screen (Edit, Delete) and the add / edit form."""
from __future__ import annotations

from typing import Optional

from .state import sort_contacts
from .widgets import FIELD_H, PAD, ROW_H, TOP, Box, Screen, View, button, label, nav_row


def visible_rows(height: int) -> int:
    """How many contacts the list shows at once on a screen this tall (9 at 1200 px)."""
    return (height - TOP) // ROW_H


class ContactList(Screen):
    app, name, title, root_of_app = "contacts", "contacts/list", "Contacts", True

    def actions(self):
        return [("Add contact", "+", lambda: self.nav.push(ContactForm(self.nav)))]

    def content(self, top: int) -> list[View]:
        width, height = self.nav.size
        contacts = self.nav.data["contacts"]
        if not contacts:
            return [label((PAD, top + 40, width - PAD, top + 120), "No contacts", style="subtext")]
        return [self.rows(contacts, (0, top, width, height), self._row)]

    def _row(self, k: int, contact: dict, box: Box) -> View:
        return nav_row(box, contact["name"], contact["phone"],
                       lambda: self.nav.push(ContactDetail(self.nav, contact)), self.rid("contact"))


class ContactDetail(Screen):
    app, name = "contacts", "contacts/detail"

    def __init__(self, nav, contact: dict):
        super().__init__(nav)
        self.contact = contact            # the very dict in the data list, so edits show here

    @property
    def title(self) -> str:
        return self.contact["name"]

    def content(self, top: int) -> list[View]:
        width = self.nav.size[0]
        half = width // 2
        return [label((PAD, top + 30, width - PAD, top + 100), self.contact["name"],
                      self.rid("name"), style="heading"),
                label((PAD, top + 100, width - PAD, top + 160), self.contact["phone"],
                      self.rid("phone")),
                button((PAD, top + 200, half - 12, top + 200 + FIELD_H), "Edit",
                       lambda: self.nav.push(ContactForm(self.nav, self.contact)), self.rid("edit")),
                button((half + 12, top + 200, width - PAD, top + 200 + FIELD_H), "Delete",
                       self._delete, self.rid("delete"))]

    def _delete(self) -> None:
        contacts = self.nav.data["contacts"]
        contacts[:] = [c for c in contacts if c is not self.contact]
        self.nav.pop()


class ContactForm(Screen):
    """New contact (``contact`` None) or edit of an existing one; Save validates and goes back."""
    app = "contacts"

    def __init__(self, nav, contact: Optional[dict] = None):
        super().__init__(nav)
        self.contact = contact
        self.name = "contacts/edit" if contact else "contacts/add"
        self.title = "Edit contact" if contact else "New contact"
        if contact:
            self.fields = {"name": contact["name"], "phone": contact["phone"]}

    def content(self, top: int) -> list[View]:
        return self.form(top, [("name", "Name"), ("phone", "Phone")], self._save)

    def _save(self) -> None:
        name = " ".join(self.fields.get("name", "").split())
        phone = self.fields.get("phone", "").strip()
        if not name or not phone:
            self.error = "Name is required" if not name else "Phone is required"
            return
        contacts = self.nav.data["contacts"]
        if self.contact is None:
            contacts.append({"name": name, "phone": phone})
        else:
            self.contact.update(name=name, phone=phone)
        sort_contacts(contacts)
        self.nav.pop()
