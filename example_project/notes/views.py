from django import forms
from django.core.cache import cache
from django.shortcuts import redirect, render

from django_azure_mi import probes

from .models import Note


class NoteForm(forms.ModelForm):
    class Meta:
        model = Note
        fields = ["text", "attachment"]


def index(request):
    """Notes (Postgres) with signed links to their files (Blob Storage) and a visit counter (Redis)."""
    form = NoteForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        form.save()
        return redirect("index")
    cache.add("visits", 0, timeout=None)
    visits = cache.incr("visits")
    notes = Note.objects.all()[:20]
    return render(request, "notes/index.html", {"form": form, "notes": notes, "visits": visits})


def status(request):
    """Each connection's identity (from its token's claims - never the token) and health."""
    results = probes.run(probes.targets(), timeout=10, deep=False)
    return render(request, "notes/status.html", {"results": results, "healthy": all(r.ok for r in results)})
