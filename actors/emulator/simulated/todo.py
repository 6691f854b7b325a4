"""To-do app: a checklist (tap toggles, long-press offers Delete) and an "Add task" form."""
from __future__ import annotations

from .widgets import PAD, Box, Dialog, Screen, View, button, checkbox, label

BOTTOM_BAR = 130                     # room for the "Add task" button under the list


class TodoList(Screen):
    app, name, title, root_of_app = "todo", "todo/list", "To-do", True

    def content(self, top: int) -> list[View]:
        width, height = self.nav.size
        items = self.nav.data["todo"]
        views = [self.rows(items, (0, top, width, height - BOTTOM_BAR), self._row) if items else
                 label((PAD, top + 40, width - PAD, top + 120), "No tasks yet", style="subtext")]
        views.append(button((PAD, height - BOTTOM_BAR + 17, width - PAD, height - 17), "Add task",
                            lambda: self.nav.push(TodoForm(self.nav)), self.rid("add")))
        return views

    def _row(self, k: int, item: dict, box: Box) -> View:
        return checkbox(box, item["text"], item["done"], lambda: self._toggle(item),
                        lambda: self._menu(item), self.rid("task"))

    def _toggle(self, item: dict) -> None:
        item["done"] = not item["done"]

    def _menu(self, item: dict) -> None:
        self.dialog = Dialog("menu", item["text"], [("Delete", lambda: self._delete(item)),
                                                    ("Cancel", self.dismiss)])

    def _delete(self, item: dict) -> None:
        items = self.nav.data["todo"]
        items[:] = [i for i in items if i is not item]
        self.dismiss()


class TodoForm(Screen):
    app, name, title = "todo", "todo/add", "New task"

    def content(self, top: int) -> list[View]:
        return self.form(top, [("text", "Task")], self._save)

    def _save(self) -> None:
        text = " ".join(self.fields.get("text", "").split())
        if not text:
            self.error = "Enter a task"
            return
        self.nav.data["todo"].append({"text": text, "done": False})
        self.nav.pop()
